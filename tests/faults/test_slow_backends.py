"""Fault suite, item 2: Redis and PostgreSQL slowed by seconds still let every event be acknowledged
within Slack's 3 s, and nothing is lost when they recover.

Both are reached through a delaying TCP proxy on 127.0.0.1 (tests/faults/proxy.py) by the bot
(slack-bolt over Socket Mode against the local Slack) and by a real `python -m bot worker`.
While every packet waits a second each way, five people ask questions; then the proxy stops
delaying, and every question has its one answer in its own thread and its row in the database.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import create_engine, text

from tests.adapters.test_slack import ACK_WITHIN_S, CHANNEL, socket_adapter
from tests.fakes.slack_server import BOT_USER_ID, FakeSlackServer
from tests.faults.proxy import DelayingProxy
from tests.support import servers
from tests.support.engines import EngineBuilder, make_settings
from tests.support.processes import start_worker, stop
from tests.workers.agent_support import wait_until

QUESTIONS = 5
#: Seconds each packet waits in the proxy, each way: a query costs about twice this.
DELAY_S = 1.0


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database of the session's server, dropped after the test."""
    with servers.postgres_database(postgres_url, f"fault_{os.getpid()}") as url:
        yield url


def proxy_for(url: str) -> DelayingProxy:
    parts = urlsplit(url)
    return DelayingProxy(parts.hostname or "127.0.0.1", parts.port or 0)


def test_slow_redis_and_database_delay_no_ack_and_lose_nothing(
        tmp_path: Path, postgres_database: str, redis_url: str, make_engine: EngineBuilder) -> None:
    with proxy_for(postgres_database) as slow_db, proxy_for(redis_url) as slow_redis, FakeSlackServer() as slack:
        env = {"DATABASE_URL": slow_db.url_for(postgres_database), "REDIS_URL": slow_redis.url_for(redis_url),
               "SLACK_BOT_TOKEN": slack.bot_token, "SLACK_API_URL": slack.api_url.rstrip("/")}
        engine, _ = make_engine(**env)
        settings = make_settings(tmp_path, **env)
        worker = start_worker(settings, "slow-worker")
        try:
            wait_until(lambda: engine.queue.listening_workers(), 60, "the worker to listen")
            with socket_adapter(engine, slack):
                slow_db.delay = slow_redis.delay = DELAY_S
                started = time.monotonic()
                with engine.db.reading() as session:
                    session.execute(text("select 1"))
                assert time.monotonic() - started >= DELAY_S  # the database is slow now
                envelopes = [slack.send_event({"type": "app_mention", "channel": CHANNEL,
                                               "text": f"<@{BOT_USER_ID}> question {n}: what is a monad?"})
                             for n in range(QUESTIONS)]
                acks = [slack.wait_for_ack(envelope) for envelope in envelopes]
                time.sleep(3 * DELAY_S)  # the bot works on them, slowly
                slow_db.delay = slow_redis.delay = 0.0
                threads = [slack.envelope(envelope).event["ts"] for envelope in envelopes]

                def answers() -> list[list[str]]:
                    return [[m.text for m in slack.messages_in_thread(CHANNEL, ts) if m.bot_id] for ts in threads]

                wait_until(lambda: all(answers()), 120, "every question to be answered")
                time.sleep(0.5)  # a second answer to any of them would have been posted by now
        finally:
            stop(worker)
    assert all(ack < ACK_WITHIN_S for ack in acks), acks
    assert [len(each) for each in answers()] == [1] * QUESTIONS
    with create_engine(postgres_database).connect() as connection:
        stored = connection.execute(text("select text from messages where role = 'user' order by id")).scalars()
        assert sorted(stored) == sorted(f"question {n}: what is a monad?" for n in range(QUESTIONS))
