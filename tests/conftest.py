"""Shared fixtures: real servers (Redis, PostgreSQL) and engines on throw-away data dirs."""

from __future__ import annotations

import os
import time
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


#: Seconds a test's processes get to let go of its Redis database once the test is over.
REDIS_LET_GO_S = 10


def _clients_on(redis, db: int) -> list[str]:
    """Return the addresses of the other clients connected to a Redis database."""
    me = redis.client_id()
    return [client["addr"] for client in redis.client_list()
            if int(client.get("db", -1)) == db and int(client["id"]) != me]


def _other_processes_at(addresses: list[str]) -> list[str]:
    """Return "pid N: command line" of each process but this one with a TCP socket at one of the addresses."""
    ports = {int(address.rsplit(":", 1)[1]) for address in addresses}
    inodes = {fields[9] for fields in (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
              if int(fields[1].split(":")[1], 16) in ports}
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if any(os.readlink(fd).removeprefix("socket:[").rstrip("]") in inodes for fd in (proc / "fd").iterdir()):
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                found.append(f"pid {proc.name}: {command[:160]}")
        except OSError:
            continue
    return found


@pytest.fixture
def redis_url(redis_server_url: str) -> Iterator[str]:
    """A Redis database of its own for one test (emptied first), on the session's server.

    No other process is connected to the database: a worker some earlier test left running would
    otherwise take this test's jobs. A test that leaves a process connected to it fails, naming it.
    """
    from redis import Redis

    base = redis_server_url.rsplit("/", 1)[0]
    with Redis.from_url(f"{base}/0", decode_responses=True) as redis:
        # One nothing is connected to; else one only this process still is (an engine a test
        # did not close: it takes no jobs).
        db = next((n for n in range(1, 16) if not _clients_on(redis, n)), None) or \
            next((n for n in range(1, 16) if not _other_processes_at(_clients_on(redis, n))), None)
        if db is None:
            pytest.fail("every Redis database has processes connected: earlier tests left them running")
        with Redis.from_url(f"{base}/{db}") as chosen:
            chosen.flushdb()
        yield f"{base}/{db}"
        deadline = time.monotonic() + REDIS_LET_GO_S
        while (left := _other_processes_at(_clients_on(redis, db))) and time.monotonic() < deadline:
            time.sleep(0.2)
    if left:
        pytest.fail(f"processes still connected to this test's Redis database {db} after it ended: {'; '.join(left)}")


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
