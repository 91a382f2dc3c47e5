"""A worker outlives a Redis outage: it listens again once Redis is back, and the request sent meanwhile runs.

A real `python -m bot worker` reaches a real redis-server through a TCP proxy on 127.0.0.1
(tests/faults/proxy.py) that the test cuts in one of two ways: every connection ends and every
new one is closed at once (Redis restarting), or every connection ends and new ones go
unanswered, so connecting times out (a host gone silent). The worker is never restarted; the
request queued while it was cut off from Redis is run once the proxy lets connections through
again; so is a run that was going when Redis went away.
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

#: The thread of the request sent while Redis is away, and of the run that is going when it goes.
QUEUED_MEANWHILE = ThreadRef("slack", CHANNEL, "1700000000.000400")
RUNNING = ThreadRef("slack", CHANNEL, "1700000000.000500")
#: Seconds Redis stays cut off: past the Redis client's retries (3, backoff capped at 2 s) of
#: connects that each time out after 3 s.
OUTAGE_S = 20


@pytest.mark.parametrize(("fault", "during"), [("refused", "idle"), ("timing out", "idle"), ("refused", "a run")])
def test_a_worker_cut_off_from_redis_listens_again_and_runs_what_was_queued_meanwhile(
        fault: str, during: str, tmp_path: Path, redis_url: str, make_engine: EngineBuilder) -> None:
    manifest = str(toy_manifest(tmp_path, mode="cold"))
    proxy: DelayingProxy
    with proxy_for(redis_url) as proxy, FakeSlackServer() as slack:
        slack_env = {"SLACK_BOT_TOKEN": slack.bot_token, "SLACK_API_URL": slack.api_url.rstrip("/")}
        engine, _ = make_engine(make_settings(tmp_path, REDIS_URL=redis_url, BOT_MANIFEST=manifest, **slack_env))
        engine.attach_port(SlackPort(bolt_web_client(slack)))
        worker_settings = make_settings(tmp_path, REDIS_URL=proxy.url_for(redis_url), BOT_MANIFEST=manifest,
                                        **slack_env)
        log = tmp_path / "worker.log"
        worker = start_worker(worker_settings, "cut-off-worker", log=log)
        asked = {QUEUED_MEANWHILE: "/agent list the files"}
        try:
            wait_until(lambda: worker_names(redis_url) == {"cut-off-worker"}, 60, "the worker to register")
            if during == "a run":  # the worker and its work-horse lose Redis in the middle of a run
                asked[RUNNING] = f"/agent sleep {OUTAGE_S}"
                engine.dispatch(Message(where=RUNNING, text=asked[RUNNING], user_id="U1", user_name="ana"))
                wait_until(lambda: [r for r in runs(engine, RUNNING) if r.state == RunState.RUNNING], 60, "the run")
            proxy.cut() if fault == "refused" else proxy.black_hole()
            time.sleep(OUTAGE_S / 2)
            engine.dispatch(Message(where=QUEUED_MEANWHILE, text=asked[QUEUED_MEANWHILE], user_id="U1",
                                    user_name="ana"))
            time.sleep(OUTAGE_S / 2)
            assert runs(engine, QUEUED_MEANWHILE) == []  # the request waits in Redis: nothing took it meanwhile
            proxy.restore()
            wait_until(lambda: all(run.state.is_final for where in asked for run in runs(engine, where))
                       and all(runs(engine, where) for where in asked), 120, "every run asked for to end")
            assert worker.poll() is None, "the worker exited instead of listening again"
        finally:
            stop(worker)
        answers = {where: [m.text for m in slack.messages_in_thread(CHANNEL, where.thread) if not m.blocks]
                   for where in asked}
    assert {where: [run.state for run in runs(engine, where)] for where in asked} == \
        {where: [RunState.DONE] for where in asked}
    assert [len(texts) for texts in answers.values()] == [1] * len(asked), answers
    assert answers[QUEUED_MEANWHILE][0].startswith("Listed the files of ")
    if during == "a run":
        assert answers[RUNNING] == ["Slept."]
    assert "Redis" in log.read_text()


def runs(engine: Engine, where: ThreadRef) -> list[AgentRun]:
    with engine.db.reading() as session:
        conversation = Conversations(session).find(where)
        return Runs(session).in_conversation(conversation.id) if conversation else []
