"""Shared fixtures: real servers (Redis, PostgreSQL) and engines on throw-away data dirs."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.config import Settings
from bot.engine import Engine, set_current
from bot.queue import InProcessQueue
from tests.support import servers

REPO = Path(__file__).resolve().parent.parent

# Fixtures of the local platform servers (tests/fakes), available to every test.
pytest_plugins = [
    "tests.fakes.anthropic_fixtures",
    "tests.fakes.discord_fixtures",
    "tests.fakes.openai_fixtures",
    "tests.fakes.slack_fixtures",
]

# Entry points of whatever else is installed must not leak into the tests.
os.environ["BOT_DISABLE_ENTRYPOINTS"] = "1"
os.environ.pop("ANTHROPIC_API_KEY", None)
os.environ.pop("REDIS_URL", None)
os.environ.pop("DATABASE_URL", None)


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """A real redis-server on 127.0.0.1 for the whole test session."""
    try:
        with servers.redis_server() as url:
            yield url
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


_redis_dbs = itertools.cycle(range(1, 16))


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """A Redis database of its own for one test (emptied first), on the session's server."""
    from redis import Redis

    url = redis_server_url.rsplit("/", 1)[0] + f"/{next(_redis_dbs)}"
    with Redis.from_url(url) as redis:
        redis.flushdb()
    return url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server on 127.0.0.1 for the whole test session."""
    try:
        with servers.postgres_server() as url:
            yield url
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database on SQLite and on PostgreSQL (each test runs on both)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    base = request.getfixturevalue("postgres_url")
    name = f"t_{os.getpid()}_{abs(hash(request.node.nodeid)) % 10**8}"
    from sqlalchemy import create_engine, text

    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def make_settings(tmp_path: Path, **env: str) -> Settings:
    """Return settings for a throw-away data dir with the repo's manifest."""
    base = {"BOT_DATA_DIR": str(tmp_path / "data"), "BOT_MANIFEST": str(REPO / "manifest.yml")}
    return Settings.from_env({**base, **env})


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """An engine on SQLite with the in-process queue, as the console bot runs."""
    built = Engine.from_settings(make_settings(tmp_path), queue=InProcessQueue(), load_entrypoints=False)
    set_current(built)
    yield built
    set_current(None)
    built.close()


def bot_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Return an environment for running `python -m bot` in a subprocess on throw-away state."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DISCORD_", "ANTHROPIC_"))}
    env.update({"BOT_DATA_DIR": str(tmp_path / "data"), "BOT_MANIFEST": str(REPO / "manifest.yml"),
                "PYTHONPATH": str(REPO)})
    env.update(extra)
    return env


def run_bot(args: list[str], tmp_path: Path, *, input: str = "", timeout: float = 120,
            **env: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m bot ARGS` as a user would, with stdin from `input`."""
    return subprocess.run([sys.executable, "-m", "bot", *args], input=input, capture_output=True, text=True,
                          timeout=timeout, env=bot_env(tmp_path, **env), cwd=REPO)
