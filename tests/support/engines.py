"""The bot on throw-away state: engines in this process, or `python -m bot` in a subprocess.

Every room's engine fixtures build on `EngineBuilder` (the `make_engine` fixture in
tests/conftest.py): an engine on a throw-away data dir, the repo's manifest with optional
section overrides, a `RecordingPort` attached, and closed after the test.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bot.config import Settings
from bot.engine import Dispatched, Engine, set_current
from bot.queue import JobQueue
from bot.types import Message, ThreadRef
from tests.support.ports import RecordingPort

REPO = Path(__file__).resolve().parents[2]

#: The thread most tests talk in, on the RecordingPort's default platform.
WHERE = ThreadRef("test", "C1", "T1")

#: Seconds a test waits for one message's job before it fails.
JOB_TIMEOUT_S = 60

#: What a fixture building engines hands a test: call it, get an engine and the port it posts to.
EngineFactory = Callable[..., tuple[Engine, RecordingPort]]


#: What the test manifests lay over the repo's: the cold agent, so a test that does not test
#: the warm server starts no `opencode serve` (~8 s and ~300 MB each on 2 cores). Tests of the
#: warm mode ask for it (`agent: {mode: warm}`).
TEST_DEFAULTS: dict[str, dict[str, Any]] = {"agent": {"mode": "cold"}}


def make_settings(tmp_path: Path, **env: str) -> Settings:
    """Return settings for a throw-away data dir with the repo's manifest (cold agent: TEST_DEFAULTS)."""
    base = {"BOT_DATA_DIR": str(tmp_path / "data"), "BOT_MANIFEST": str(manifest_for_tests())}
    return Settings.from_env({**base, **env})


_test_manifest: Path | None = None


def manifest_for_tests() -> Path:
    """Return the repo's manifest with TEST_DEFAULTS laid over it, written once per test process.

    Outside any test's folder: settings are also made for folders that do not exist.
    """
    global _test_manifest
    if _test_manifest is None or not _test_manifest.exists():
        data = yaml.safe_load((REPO / "manifest.yml").read_text())
        for section, values in TEST_DEFAULTS.items():
            data.setdefault(section, {}).update(values)
        handle, name = tempfile.mkstemp(prefix="threadwork-test-manifest-", suffix=".yml")
        with os.fdopen(handle, "w") as file:
            file.write(yaml.safe_dump(data))
        _test_manifest = Path(name)
    return _test_manifest


def write_manifest(folder: Path, overrides: dict[str, dict[str, Any]]) -> Path:
    """Write the repo's manifest with TEST_DEFAULTS and then some sections' keys replaced; return its path."""
    data = yaml.safe_load((REPO / "manifest.yml").read_text())
    for section, values in [*TEST_DEFAULTS.items(), *overrides.items()]:
        data.setdefault(section, {}).update(values)
    path = folder / "manifest.yml"
    path.write_text(yaml.safe_dump(data))
    return path


class EngineBuilder:
    """Builds engines on one throw-away data dir, each with a RecordingPort; `close` closes them all."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.built: list[Engine] = []

    def __call__(self, settings: Settings | None = None, *, manifest: dict[str, dict[str, Any]] | None = None,
                 queue: JobQueue | None = None, platform: str = "test", **env: str) -> tuple[Engine, RecordingPort]:
        """Return a new engine (this process's current one) and the RecordingPort attached to it.

        `settings` replaces the throw-away ones; otherwise `manifest={section: {key: value}}`
        overrides the repo's manifest and `env` adds or replaces environment variables. Without
        a `queue`, the settings choose one (Redis when REDIS_URL is set, else in-process).
        """
        if settings is None:
            if manifest:
                env = {**env, "BOT_MANIFEST": str(write_manifest(self.tmp_path, manifest))}
            settings = make_settings(self.tmp_path, **env)
        elif manifest or env:
            raise TypeError("pass either settings or manifest/env overrides, not both")
        engine = Engine.from_settings(settings, queue=queue, load_entrypoints=False)
        self.built.append(engine)
        set_current(engine)
        port = RecordingPort(platform)
        engine.attach_port(port)
        return engine, port

    def close(self) -> None:
        """Close every engine built (closing one twice is harmless) and forget the current one."""
        set_current(None)
        for engine in self.built:
            engine.close()


def message(text: str, user: str = "U1", where: ThreadRef = WHERE, external_id: str | None = None) -> Message:
    """Return a message from ana (or `user`) in the test thread."""
    return Message(where=where, text=text, user_id=user, user_name="ana", external_id=external_id)


def dispatch_and_wait(engine: Engine, text: str, user: str = "U1", where: ThreadRef = WHERE) -> Dispatched:
    """Dispatch a message and wait for its job; return what dispatch did."""
    dispatched = engine.dispatch(message(text, user, where))
    if dispatched.job_id:
        assert engine.queue.wait([dispatched.job_id], JOB_TIMEOUT_S), "the message's job did not finish"
    return dispatched


def rows(engine: Engine, sql: str, *args: Any) -> list[tuple]:
    """Run a read-only query on the engine's SQLite database."""
    path = engine.settings.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        return connection.execute(sql, args).fetchall()


def bot_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Return an environment for running `python -m bot` in a subprocess on throw-away state."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DISCORD_", "ANTHROPIC_"))}
    env.update({"BOT_DATA_DIR": str(tmp_path / "data"), "BOT_MANIFEST": str(manifest_for_tests()),
                "PYTHONPATH": str(REPO)})
    env.update(extra)
    return env


def run_bot(args: list[str], tmp_path: Path, *, input: str = "", timeout: float = 120,
            **env: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m bot ARGS` as a user would, with stdin from `input`."""
    return subprocess.run([sys.executable, "-m", "bot", *args], input=input, capture_output=True, text=True,
                          timeout=timeout, env=bot_env(tmp_path, **env), cwd=REPO)
