"""A worker outlives a Redis outage: it listens again once Redis is back, and the request sent meanwhile runs.

A real `python -m bot worker` reaches a real redis-server through a TCP proxy on 127.0.0.1
(tests/faults/proxy.py) that the test cuts in one of two ways: every connection ends and every
new one is closed at once (Redis restarting), or every connection ends and new ones go
unanswered, so connecting times out (a host gone silent). The worker is never restarted; the
request queued while it was cut off from Redis is run once the proxy lets connections through
again, and its log says what happened without a traceback.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from adapters.slack import SlackPort
from bot.db.repositories import Conversations, Runs
from bot.engine import Engine
from bot.types import AgentRun, Message, RunState, ThreadRef
from tests.adapters.test_slack import CHANNEL
from tests.fakes.slack_fixtures import bolt_web_client
from tests.fakes.slack_server import FakeSlackServer
from tests.faults.proxy import DelayingProxy
from tests.faults.test_restarts import toy_manifest, worker_names
from tests.faults.test_slow_backends import proxy_for
from tests.support.engines import EngineBuilder, make_settings
from tests.support.processes import start_worker, stop
from tests.workers.agent_support import wait_until

WHERE_SLACK = ThreadRef("slack", CHANNEL, "1700000000.000400")
#: Seconds Redis stays cut off: past the Redis client's retries (3, backoff capped at 2 s) of
#: connects that each time out after 3 s.
OUTAGE_S = 20


@pytest.mark.parametrize("fault", ["refused", "timing out"])
def test_a_worker_cut_off_from_redis_listens_again_and_runs_what_was_queued_meanwhile(
        fault: str, tmp_path: Path, redis_url: str, make_engine: EngineBuilder) -> None:
    manifest = str(toy_manifest(tmp_path, mode="cold"))
    proxy: DelayingProxy
    with proxy_for(redis_url) as proxy, FakeSlackServer() as slack:
        slack_env = {"SLACK_BOT_TOKEN": slack.bot_token, "SLACK_API_URL": slack.api_url.rstrip("/")}
        engine, _ = make_engine(make_settings(tmp_path, REDIS_URL=redis_url, BOT_MANIFEST=manifest, **slack_env))
        engine.attach_port(SlackPort(bolt_web_client(slack)))
        worker_settings = make_settings(tmp_path, REDIS_URL=proxy.url_for(redis_url), BOT_MANIFEST=manifest,
                                        **slack_env)
        log = tmp_path / "worker.log"
        where = WHERE_SLACK
        worker = start_worker(worker_settings, "cut-off-worker", log=log)
        try:
            wait_until(lambda: worker_names(redis_url) == {"cut-off-worker"}, 60, "the worker to register")
            proxy.cut() if fault == "refused" else proxy.black_hole()
            time.sleep(OUTAGE_S / 2)
            engine.dispatch(Message(where=where, text="/agent list the files", user_id="U1", user_name="ana"))
            time.sleep(OUTAGE_S / 2)
            assert runs(engine) == []  # the request waits in Redis: nothing took it meanwhile
            proxy.restore()
            wait_until(lambda: [run for run in runs(engine) if run.state.is_final], 120,
                       "the run asked for during the outage to end")
            assert worker.poll() is None, "the worker exited instead of listening again"
        finally:
            stop(worker)
        answers = [m.text for m in slack.messages_in_thread(CHANNEL, where.thread) if not m.blocks]
    assert [run.state for run in runs(engine)] == [RunState.DONE]
    assert len(answers) == 1 and answers[0].startswith("Listed the files of "), answers
    said = log.read_text()
    assert "Redis" in said and "Traceback" not in said, said[-3000:]



def runs(engine: Engine) -> list[AgentRun]:
    with engine.db.reading() as session:
        conversation = Conversations(session).find(WHERE_SLACK)
        return Runs(session).in_conversation(conversation.id) if conversation else []
