"""Fault suite, item 4: a 429 storm with `Retry-After` ends with every message in its correct final state.

Three agent runs in one Slack channel at once (the toy CLI agent, working slowly so their
status messages are edited while it works), while the local Slack answers the next posts and
edits with 429 and `Retry-After: 1`. Afterwards every status message shows its run done,
every answer is in its thread once, and each refused post was sent again exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bot.queue import InProcessQueue
from tests.adapters.test_slack import CHANNEL, socket_adapter
from tests.fakes.slack_server import BOT_USER_ID, FakeSlackServer
from tests.support.engines import EngineBuilder

RUNS = 3
TOY = {"plugins": {"modules": ["tests.workers.toy_agent_plugin"]}, "agent": {"name": "toy"}}


@pytest.fixture
def slack_server() -> Iterator[FakeSlackServer]:
    with FakeSlackServer() as server:
        yield server


def test_a_429_storm_on_posts_and_edits_ends_with_every_status_and_answer_right(
        make_engine: EngineBuilder, slack_server: FakeSlackServer) -> None:
    engine, _ = make_engine(queue=InProcessQueue(), manifest=TOY)
    with socket_adapter(engine, slack_server):
        slack_server.rate_limit("chat.update", times=6, retry_after=1)
        slack_server.rate_limit("chat.postMessage", times=3, retry_after=1)
        threads = [slack_server.envelope(slack_server.send_event(
            {"type": "app_mention", "channel": CHANNEL,
             "text": f"<@{BOT_USER_ID}> /agent list the files slowly"})).event["ts"] for _ in range(RUNS)]
        assert engine.queue.wait(timeout=120)

        def answered() -> list[list[str]]:
            return [[m.text for m in slack_server.messages_in_thread(CHANNEL, ts) if m.bot_id and not m.blocks]
                    for ts in threads]

        slack_server.wait_for(lambda: all(answered()), timeout=30)

    statuses = [[m for m in slack_server.messages_in_thread(CHANNEL, ts) if m.blocks] for ts in threads]
    assert all(len(status) == 1 for status in statuses)  # one status message per run, never a second
    finals = [status[0].versions[-1].text for status in statuses]
    assert all("done" in final for final in finals), finals
    assert [len(texts) for texts in answered()] == [1] * RUNS  # each answer once, in its own thread
    assert all("Listed the files" in texts[0] for texts in answered())
    # A status and an answer per run, and the three posts refused with 429 sent once more each.
    assert len(slack_server.calls_to("chat.postMessage")) == 2 * RUNS + 3


def test_a_command_answered_in_dispatch_lands_after_a_429(
        make_engine: EngineBuilder, slack_server: FakeSlackServer) -> None:
    engine, _ = make_engine(queue=InProcessQueue(), manifest=TOY)
    with socket_adapter(engine, slack_server):
        slack_server.rate_limit("chat.postMessage", times=1, retry_after=1)
        thread = slack_server.envelope(slack_server.send_event(
            {"type": "app_mention", "channel": CHANNEL, "text": f"<@{BOT_USER_ID}> /help"})).event["ts"]

        def replies() -> list[str]:
            return [m.text for m in slack_server.messages_in_thread(CHANNEL, thread) if m.bot_id]

        slack_server.wait_for(replies, timeout=10)
    assert len(replies()) == 1 and "/agent" in replies()[0]  # the help text, once, a second late
    assert len(slack_server.calls_to("chat.postMessage")) == 2  # refused once, sent again once
