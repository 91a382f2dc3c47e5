"""Fault suite, item 8: an agent that prints secrets leaks none of them anywhere the bot writes.

The real opencode, run by a real `python -m bot worker` on a real Redis, is scripted (by the
local model) to write Slack, Discord, Anthropic and PEM secrets the bot does not hold into a
file, print them, and repeat them in its answer. None may reach the chat (posts and every
edit), an uploaded file, any database table, anything Redis keeps (job results included) or
the worker's log. The file in the agent's own workspace keeps them: that is the user's repo.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from redis import Redis

from bot.types import RunState
from tests.adapters.test_slack import CHANNEL, socket_adapter
from tests.core.test_redaction import FOREIGN_SECRETS
from tests.fakes.openai_server import Turn
from tests.fakes.slack_server import BOT_USER_ID, FakeSlackServer
from tests.support.engines import EngineBuilder
from tests.support.processes import start_worker, stop
from tests.workers.agent_support import agent_settings, requires_opencode, wait_until

pytestmark = requires_opencode

SECRETS = {kind: FOREIGN_SECRETS[kind] for kind in
           ("slack bot token", "discord bot token", "anthropic key", "pem private key")}
#: What identifies each secret when searched for: the whole token, or a PEM key's body line.
MARKS = {kind: secret.splitlines()[1] if kind == "pem private key" else secret for kind, secret in SECRETS.items()}


def test_secrets_an_agent_prints_reach_no_chat_file_table_job_result_or_log(
        tmp_path: Path, model, redis_url: str, make_engine: EngineBuilder) -> None:
    found = "\n".join(SECRETS.values())
    model.script(Turn.bash(f"cat > leaked.txt <<'END'\n{found}\nEND\ncat leaked.txt"),
                 Turn.text(f"I found these in the repo:\n{found}"))
    with FakeSlackServer() as slack:
        settings = agent_settings(tmp_path, model, REDIS_URL=redis_url, SLACK_BOT_TOKEN=slack.bot_token,
                                  SLACK_API_URL=slack.api_url.rstrip("/"))
        log_file = tmp_path / "worker.log"
        worker = start_worker(settings, "secret-worker", log=log_file)
        engine, _ = make_engine(settings)
        try:
            with socket_adapter(engine, slack):
                slack.send_event({"type": "app_mention", "channel": CHANNEL,
                                  "text": f"<@{BOT_USER_ID}> /agent look for credentials in the repo"})
                wait_until(lambda: state_of(tmp_path) in (RunState.DONE, RunState.FAILED), 180, "the run to end")
                wait_until(lambda: any("I found these" in m.text for m in slack.bot_messages(CHANNEL)), 30,
                           "the answer in the thread")
        finally:
            stop(worker)
        assert state_of(tmp_path) == "done"
        everywhere = {
            "chat": [f"{version.text} {json.dumps(version.blocks)}" for m in slack.bot_messages()
                     for version in m.versions],
            "uploaded files": [f.data.decode(errors="replace") for f in slack.files],
            "database": database_values(tmp_path / "data" / "threadwork.db"),
            "redis": redis_values(redis_url),
            "worker log": [log_file.read_text(errors="replace")],
        }
        assert "leaked.txt" in [f.filename for f in slack.files]  # the file was uploaded, redacted
    for place, values in everywhere.items():
        for kind, mark in MARKS.items():
            assert not [v for v in values if mark in v], f"the {kind} reached the {place}"
    assert MARKS["slack bot token"] in (tmp_path / "data" / "workspaces" / "1" / "leaked.txt").read_text()


def state_of(tmp_path: Path) -> str | None:
    with sqlite3.connect(tmp_path / "data" / "threadwork.db") as db:
        row = db.execute("select state from agent_runs").fetchone()
    return row[0] if row else None


def database_values(path: Path) -> list[str]:
    """Every value of every row of every table (FTS shadow tables included), as text."""
    with sqlite3.connect(path) as db:
        tables = [name for (name,) in db.execute("select name from sqlite_master where type = 'table'")]
        assert {"run_events", "messages", "memories", "resources", "resource_contents"} <= set(tables)
        return [repr(row) + "".join(value.decode(errors="replace") for value in row if isinstance(value, bytes))
                for table in tables for row in db.execute(f'select * from "{table}"')]  # noqa: S608 (sqlite_master)


def redis_values(url: str) -> list[str]:
    """Every string, hash, list and stream value Redis holds for the test's database, as text."""
    values = []
    with Redis.from_url(url) as redis:
        for key in redis.scan_iter():
            kind = redis.type(key).decode()
            if kind == "string":
                values.append(redis.get(key) or b"")
            elif kind == "hash":
                values.extend(redis.hgetall(key).values())
            elif kind == "list":
                values.extend(redis.lrange(key, 0, -1))
            elif kind == "stream":
                values.extend(value for _, entry in redis.xrange(key) for value in entry.values())
    return [value.decode(errors="replace") for value in values]
