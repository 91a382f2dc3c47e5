"""Start-up: commands import the heavy SDKs only when they are used, so the prompt comes quickly.

Each test starts the real `python -m bot chat` in a subprocess and reads which modules that
process imported, from `sys.modules` as it exits. No timing is asserted: `bench/startup.py`
measures the seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bot.db import Database, head_revision
from tests.fakes.anthropic_server import FakeAnthropicServer
from tests.support.engines import REPO, bot_env

#: Packages `chat` must not import before they are needed: the LLM SDK, the platform SDKs, the
#: Redis queue (no REDIS_URL) and the terminal view's libraries (stdin is a pipe).
LOADED_WHEN_USED = ("anthropic", "slack_sdk", "slack_bolt", "discord", "rq", "redis", "rich", "prompt_toolkit")
#: Runs `python -m bot ARGS` and writes the names in `sys.modules` at exit to the file named by
#: the environment's `THREADWORK_TEST_MODULES`.
RECORDING_MAIN = (
    "import atexit, json, os, runpy, sys\n"
    "atexit.register(lambda: open(os.environ['THREADWORK_TEST_MODULES'], 'w').write(json.dumps(sorted(sys.modules))))\n"
    "runpy.run_module('bot', run_name='__main__', alter_sys=True)\n"
)


def chat(tmp_path: Path, text: str, **env: str) -> tuple[str, set[str]]:
    """Return what `python -m bot chat` printed for the piped text, and the packages it imported."""
    record = tmp_path / "modules.json"
    result = subprocess.run([sys.executable, "-c", RECORDING_MAIN, "chat"], input=f"{text}\n", capture_output=True,
                            text=True, timeout=120, cwd=REPO,
                            env=bot_env(tmp_path, THREADWORK_TEST_MODULES=str(record), **env))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout, {name.split(".")[0] for name in json.loads(record.read_text())}


def test_chat_answers_hello_without_the_sdks_and_without_alembic_once_the_schema_is_current(tmp_path: Path) -> None:
    out, first_start = chat(tmp_path, "hello")
    assert "bot[" in out and "Hi " in out
    assert "alembic" in first_start  # an empty database is migrated
    assert first_start & set(LOADED_WHEN_USED) == set()

    out, next_start = chat(tmp_path, "hello")
    assert "Hi " in out
    assert next_start & {"alembic", *LOADED_WHEN_USED} == set()


def test_a_direct_answer_imports_the_llm_sdk_and_streams_its_answer(
        tmp_path: Path, anthropic_server: FakeAnthropicServer) -> None:
    out, imported = chat(tmp_path, "can you explain what a race condition is?", **anthropic_server.env())
    assert "Echo: " in out and "race condition" in out.splitlines()[-1]
    assert anthropic_server.message_requests
    assert "anthropic" in imported
    assert imported & {"slack_sdk", "slack_bolt", "discord"} == set()


def test_the_head_revision_read_without_alembic_is_alembics_head() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from bot.db import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert head_revision() == ScriptDirectory.from_config(config).get_current_head()


def test_a_database_at_an_older_revision_is_still_upgraded(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    from bot.db import MIGRATIONS_DIR

    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    assert db.migrate() == head_revision()
    with db.engine.connect() as connection:
        assert "heartbeat_at" in {column["name"] for column in inspect(connection).get_columns("agent_runs")}
    db.close()
