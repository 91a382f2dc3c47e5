"""Shared fixtures: real servers (Redis, PostgreSQL) and engines on throw-away data dirs."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.engine import Engine
from bot.queue import InProcessQueue
from tests.fakes.openai_server import FakeOpenAIServer
from tests.support import servers
from tests.support.engines import REPO, EngineBuilder, bot_env, run_bot  # noqa: F401 (see below)
from tests.support.ports import RecordingPort

# REPO, bot_env and run_bot live in tests/support/engines.py; tests/adapters/test_console*.py and
# console_support.py (being reworked elsewhere) still import them from here.

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


@pytest.fixture(scope="session", autouse=True)
def no_agent_server_outlives_the_session() -> Iterator[None]:
    """Stop every warm opencode server this pytest process started, whatever a test left running."""
    yield
    from plugins.agents.opencode_server import stop_all

    stop_all()


@pytest.fixture
def model() -> Iterator[FakeOpenAIServer]:
    """The scripted OpenAI-compatible model the agents talk to (tests/fakes/openai_server.py), on
    127.0.0.1; stopped after the test, and any warm opencode server of the test with it."""
    from plugins.agents.opencode_server import stop_all

    server = FakeOpenAIServer().start()
    yield server
    server.stop()
    stop_all()


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
    name = f"t_{os.getpid()}_{abs(hash(request.node.nodeid)) % 10**8}"
    with servers.postgres_database(request.getfixturevalue("postgres_url"), name) as url:
        yield url


@pytest.fixture
def engine_builder(tmp_path: Path) -> Iterator[EngineBuilder]:
    """The one EngineBuilder of a test: every engine it builds is closed after the test."""
    builder = EngineBuilder(tmp_path)
    yield builder
    builder.close()


@pytest.fixture
def make_engine(engine_builder: EngineBuilder) -> EngineBuilder:
    """Build engines on a throw-away data dir, each with a RecordingPort; all closed after the test.

    `make_engine(settings=None, *, manifest={...}, queue=None, platform="test", **env)` returns
    (engine, port); see tests/support/engines.py. A room may wrap it (tests/plugins/conftest.py).
    """
    return engine_builder


@pytest.fixture
def engine(engine_builder: EngineBuilder) -> Engine:
    """An engine on SQLite with the in-process queue, as the console bot runs, a RecordingPort attached."""
    built, _ = engine_builder(queue=InProcessQueue())
    return built


@pytest.fixture
def port(engine: Engine) -> RecordingPort:
    """The RecordingPort the `engine` fixture posts to: the test thread as a person would see it."""
    attached = engine.port_for("test")
    assert isinstance(attached, RecordingPort)
    return attached
