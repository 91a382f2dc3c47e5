"""Memory on Slack as people see it: what was said before the mention, and memories kept with ✅.

The real Bolt app (Socket Mode) and `slack_sdk.WebClient` talk to the local Slack
(tests/fakes/slack_server.py); answers come through the real anthropic SDK from the local
Messages API, whose recorded requests show what the model was given.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from adapters import slack_port
from adapters.slack import SlackAdapter
from bot.db.repositories import Conversations
from bot.engine import Engine
from bot.queue import InProcessQueue
from bot.types import ThreadRef
from plugins.answer import claude
from tests.fakes.anthropic_server import FakeAnthropicServer
from tests.fakes.slack_fixtures import bolt_web_client, close_socket_mode
from tests.fakes.slack_server import BOT_USER_ID, DEFAULT_USER_ID, FakeSlackServer
from tests.support.engines import EngineBuilder

CHANNEL = "C0MEM"
BOB, EVE = "U0BOB", "U0EVE"
#: Something the bot said in a thread before this test's messages; never someone's words.
OLD_BOT_REPLY = "an old reply of the bot"


@pytest.fixture
def engine(make_engine: EngineBuilder, anthropic_server: FakeAnthropicServer,
           monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Engine:
    monkeypatch.setattr(claude, "EDIT_INTERVAL_S", 0.05)
    manifest = getattr(request, "param", None)
    built, _ = make_engine(queue=InProcessQueue(), manifest=manifest, **anthropic_server.env())
    return built


@pytest.fixture
def slack(engine: Engine, slack_server: FakeSlackServer) -> Iterator[SlackAdapter]:
    slack_server.add_user(BOB, "bob")
    slack_server.add_user(EVE, "eve")
    adapter = SlackAdapter(engine, bolt_web_client(slack_server), app_token=slack_server.app_token)
    engine.attach_port(adapter.port)
    adapter.connect()
    slack_server.wait_for_connection()
    try:
        yield adapter
    finally:
        assert adapter.handler is not None
        close_socket_mode(adapter.handler)
        adapter.handler = None


def mention(server: FakeSlackServer, text: str, *, thread_ts: str | None = None, user: str = DEFAULT_USER_ID,
            channel: str = CHANNEL) -> str:
    """Mention the bot (in a thread, when given); return the mention's ts."""
    event: dict[str, Any] = {"type": "app_mention", "channel": channel, "text": f"<@{BOT_USER_ID}> {text}",
                             "user": user}
    if thread_ts:
        event["thread_ts"] = thread_ts
    envelope = server.send_event(event)
    return server.envelope(envelope).event["ts"]


def bot_posts(server: FakeSlackServer, thread_ts: str, count: int, timeout: float = 20.0,
              channel: str = CHANNEL) -> list[Any]:
    """Wait until the bot has posted `count` messages in the thread (with their final text); return them."""

    def posts() -> list[Any]:
        return [m for m in server.messages_in_thread(channel, thread_ts) if m.bot_id and m.ts != thread_ts
                and m.text != OLD_BOT_REPLY                and "✍️" not in m.text and m.text != "…"]  # answers still streaming

    server.wait_for(lambda: len(posts()) >= count, timeout)
    return posts()


def answer_requests(server: FakeAnthropicServer) -> list[dict[str, Any]]:
    """Return the requests for answers (not the router's classifications, which force a tool)."""
    return [body for body in server.bodies if not body.get("tools")]


def model_was_given(server: FakeAnthropicServer, answers: int) -> str:
    """Return everything the model was sent for the `answers`-th answer of the test, as one text."""
    deadline = time.monotonic() + 10
    while len(answer_requests(server)) < answers and time.monotonic() < deadline:
        time.sleep(0.02)  # the request is recorded once its stream is done
    return json.dumps(answer_requests(server)[answers - 1], ensure_ascii=False)


def history_reads(server: FakeSlackServer) -> list[dict[str, Any]]:
    """Return the conversations.replies calls that read a thread up to a message (what came before it)."""
    return [call for call in server.calls_to("conversations.replies") if "latest" in call]


def earlier_thread(server: FakeSlackServer) -> str:
    """Start a thread where people talk before anyone mentions the bot; return its ts."""
    parent = server.add_thread_message(CHANNEL, "billing deploys from the release-7 branch now", user=BOB)
    server.add_thread_message(CHANNEL, "and its canary runs in eu-west-3", user=BOB, thread_ts=parent.ts)
    server.add_thread_message(CHANNEL, OLD_BOT_REPLY, thread_ts=parent.ts, bot=True)
    return parent.ts


# -- what was said before the mention -----------------------------------------------------------------


def test_what_was_said_before_the_mention_reaches_the_model_and_is_read_once(
        slack: SlackAdapter, slack_server: FakeSlackServer, anthropic_server: FakeAnthropicServer,
        engine: Engine) -> None:
    thread = earlier_thread(slack_server)
    asked = mention(slack_server, "/ask which branch does billing deploy from?", thread_ts=thread)
    bot_posts(slack_server, thread, 1)
    with engine.db.reading() as session:
        conversation = Conversations(session).find(ThreadRef("slack", CHANNEL, thread))
    assert conversation is not None
    shown = [(entry.author, entry.text) for entry in engine.history(conversation.id)][:3]  # /history, the web page
    assert shown == [("bob", "billing deploys from the release-7 branch now"),
                     ("bob", "and its canary runs in eu-west-3"), ("alice", "/ask which branch does billing deploy from?")]

    given = model_was_given(anthropic_server, 1)
    assert "release-7 branch" in given and "eu-west-3" in given
    assert OLD_BOT_REPLY not in given  # the bot's own posts are not someone's words
    assert given.index("release-7") < given.index("eu-west-3") < given.index("which branch does billing")
    (call,) = history_reads(slack_server)
    assert (call["ts"], call["latest"]) == (thread, asked)  # only what came before the mention
    time.sleep(0.5)
    assert len(bot_posts(slack_server, thread, 1)) == 1  # what came before is context, not questions to answer

    mention(slack_server, "/ask and where does its canary run?", thread_ts=thread)
    bot_posts(slack_server, thread, 2)
    assert "eu-west-3" in model_was_given(anthropic_server, 2)
    assert len(history_reads(slack_server)) == 1  # read once per thread


def test_a_long_thread_is_read_page_by_page(slack: SlackAdapter, slack_server: FakeSlackServer,
                                            anthropic_server: FakeAnthropicServer,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slack_port, "REPLIES_PAGE", 2)
    parent = slack_server.add_thread_message(CHANNEL, "step zero: freeze the schema", user=BOB)
    for step in range(1, 5):
        slack_server.add_thread_message(CHANNEL, f"step {step}: migration-{step}", user=BOB, thread_ts=parent.ts)
    mention(slack_server, "/ask what are the steps?", thread_ts=parent.ts)
    bot_posts(slack_server, parent.ts, 1)

    given = model_was_given(anthropic_server, 1)
    assert all(f"migration-{step}" in given for step in range(1, 5)) and "freeze the schema" in given
    calls = history_reads(slack_server)
    assert [call.get("cursor") for call in calls] == [None, "2", "4"]


def test_a_missing_scope_costs_no_answer_and_is_not_asked_again(
        slack: SlackAdapter, slack_server: FakeSlackServer, anthropic_server: FakeAnthropicServer) -> None:
    slack_server.refuse("conversations.replies", "missing_scope")
    thread = earlier_thread(slack_server)
    mention(slack_server, "/ask which branch does billing deploy from?", thread_ts=thread)
    (answer,) = bot_posts(slack_server, thread, 1)
    assert "went wrong" not in answer.text and "release-7" not in model_was_given(anthropic_server, 1)

    slack_server.refuse("conversations.replies", None)
    mention(slack_server, "/ask and the canary?", thread_ts=thread)
    bot_posts(slack_server, thread, 2)
    assert len(history_reads(slack_server)) == 1  # refused for good: not asked again


@pytest.mark.parametrize("failure", ["internal_error", "429"])
def test_a_passing_failure_is_tried_again_with_the_next_message(
        slack: SlackAdapter, slack_server: FakeSlackServer, anthropic_server: FakeAnthropicServer, failure: str) -> None:
    if failure == "429":
        slack_server.rate_limit("conversations.replies", times=1_000, retry_after=30)
    else:
        slack_server.refuse("conversations.replies", failure)
    thread = earlier_thread(slack_server)
    mention(slack_server, "/ask which branch does billing deploy from?", thread_ts=thread)
    (answer,) = bot_posts(slack_server, thread, 1)
    assert "went wrong" not in answer.text and "release-7" not in model_was_given(anthropic_server, 1)

    slack_server.refuse("conversations.replies", None)
    slack_server.rate_limit("conversations.replies", times=0)
    mention(slack_server, "/ask and where does the canary run?", thread_ts=thread)
    bot_posts(slack_server, thread, 2)
    assert len(history_reads(slack_server)) == 2
    assert "eu-west-3" in model_was_given(anthropic_server, 2)


# -- proposed memories ---------------------------------------------------------------------------------


def react(server: FakeSlackServer, message_ts: str, user: str, emoji: str = "white_check_mark") -> None:
    envelope = server.send_event({"type": "reaction_added", "user": user, "reaction": emoji, "item_user": BOT_USER_ID,
                                  "item": {"type": "message", "channel": CHANNEL, "ts": message_ts}})
    server.wait_for_ack(envelope)


def memories_listing(server: FakeSlackServer, user: str = DEFAULT_USER_ID) -> str:
    """Run `/threadwork memories` in the channel; return the bot's answer."""
    before = len(server.bot_messages(CHANNEL))
    server.send_slash_command("/threadwork", "memories", user=user, channel=CHANNEL)
    server.wait_for(lambda: len(server.bot_messages(CHANNEL)) >= before + 2)  # the thread starter, the listing
    return server.bot_messages(CHANNEL)[-1].text


@pytest.mark.parametrize("engine", [{"permissions": {"ask": [DEFAULT_USER_ID, BOB]}}], indirect=True)
def test_a_decision_is_proposed_and_kept_only_when_someone_allowed_reacts(
        slack: SlackAdapter, slack_server: FakeSlackServer, anthropic_server: FakeAnthropicServer) -> None:
    asked = mention(slack_server, "/ask ok, we decided staging runs on Thursdays. What else goes in the checklist?")
    answer, proposal = bot_posts(slack_server, asked, 2)
    assert proposal.thread_ts == asked
    assert history_reads(slack_server) == []  # the mention started the thread: nothing before
    assert proposal.text == "Remember that staging runs on Thursdays? React ✅ to keep it for this channel."
    assert "Staging runs on Thursdays" not in memories_listing(slack_server)  # not kept yet
    other = mention(slack_server, "/ask when does staging run?")
    bot_posts(slack_server, other, 1)
    assert "Staging runs on Thursdays" not in model_was_given(anthropic_server, 2)  # nor recalled

    react(slack_server, proposal.ts, EVE)  # not allowed to talk to the bot here
    react(slack_server, proposal.ts, BOB, emoji="thumbsup")  # not the keeping emoji
    assert "Staging runs on Thursdays" not in memories_listing(slack_server)
    react(slack_server, proposal.ts, BOB)
    kept = bot_posts(slack_server, asked, 3)[2]
    assert kept.text.startswith("Kept for this channel as `m") and kept.text.endswith(": Staging runs on Thursdays")

    assert "Staging runs on Thursdays" in memories_listing(slack_server)
    again = mention(slack_server, "/ask when does staging run?")
    bot_posts(slack_server, again, 1)
    assert "Staging runs on Thursdays" in model_was_given(anthropic_server, 3)

    react(slack_server, proposal.ts, DEFAULT_USER_ID)  # kept already: nothing more is said
    mention(slack_server, "/ask ok, we decided staging runs on Thursdays.", thread_ts=asked)
    bot_posts(slack_server, asked, 4)
    assert len([m for m in slack_server.bot_messages(CHANNEL) if m.text.startswith("Remember that staging")]) == 1


def test_a_preference_is_kept_for_the_person_who_said_it(
        slack: SlackAdapter, slack_server: FakeSlackServer, anthropic_server: FakeAnthropicServer) -> None:
    asked = mention(slack_server, "/ask I prefer answers with a code example first. How do I read a file?", user=BOB)
    _, proposal = bot_posts(slack_server, asked, 2)
    assert proposal.text.startswith("Remember that you prefer answers with a code example first? React ✅")

    react(slack_server, proposal.ts, DEFAULT_USER_ID)  # someone else's preference is not theirs to keep
    react(slack_server, proposal.ts, BOB)
    kept = bot_posts(slack_server, asked, 3)[2]
    assert kept.text.startswith("Kept for bob as `m")

    for answers, (user, expected) in enumerate(((BOB, True), (DEFAULT_USER_ID, False)), start=2):
        thread = mention(slack_server, "/ask how do I write a file?", user=user, channel="C0OTHER")
        bot_posts(slack_server, thread, 1, channel="C0OTHER")
        assert ("code example first" in model_was_given(anthropic_server, answers)) is expected


@pytest.mark.parametrize("engine", [{"memory": {"propose": False}}], indirect=True)
def test_proposals_can_be_turned_off(slack: SlackAdapter, slack_server: FakeSlackServer) -> None:
    asked = mention(slack_server, "/ask from now on we deploy with make ship. Anything else?")
    bot_posts(slack_server, asked, 1)
    with pytest.raises(TimeoutError):
        bot_posts(slack_server, asked, 2, timeout=1.5)
