"""Memory on Discord as people see it: what was said in a thread before the mention, and ✅ on a proposal.

discord.py's real client (gateway and REST) talks to the local Discord
(tests/fakes/discord_server.py); answers come through the real anthropic SDK from the local
Messages API, whose recorded requests show what the model was given.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator

import pytest

from adapters.discord import DiscordBot
from bot.engine import Engine
from bot.queue import InProcessQueue
from plugins.answer import claude
from tests.fakes.anthropic_server import FakeAnthropicServer
from tests.fakes.discord_server import FakeDiscordServer
from tests.support.engines import EngineBuilder

#: discord.py waits this long after the last GUILD_CREATE before it is ready (2 s by default).
GUILD_READY_TIMEOUT = 0.05


@pytest.fixture
def engine(discord_server: FakeDiscordServer, make_engine: EngineBuilder, anthropic_server: FakeAnthropicServer,
           monkeypatch: pytest.MonkeyPatch) -> Engine:
    monkeypatch.setattr(claude, "EDIT_INTERVAL_S", 0.05)
    bob = discord_server.add_user("bob")
    discord_server.add_member(bob)
    discord_server.bob = bob  # type: ignore[attr-defined]
    # Alice and bob may talk to the bot; eve may not.
    allowed = [discord_server.human["id"], bob["id"]]
    built, _ = make_engine(queue=InProcessQueue(), manifest={"permissions": {"ask": allowed}},
                           DISCORD_TOKEN=discord_server.token, **discord_server.env, **anthropic_server.env())
    return built


@pytest.fixture
def bot(engine: Engine) -> Iterator[DiscordBot]:
    running = DiscordBot(engine, guild_ready_timeout=GUILD_READY_TIMEOUT)
    engine.attach_port(running.port)
    with running:
        yield running
        engine.queue.wait(timeout=30)


def bot_posts(server: FakeDiscordServer, channel_id: str, count: int, timeout: float = 20.0) -> list[str]:
    """Wait until the bot has posted `count` messages with their final text in the channel; return their texts."""

    def posts() -> list[str]:
        return [m.content for m in server.messages_in(channel_id) if m.author["id"] == server.bot_id
                and "✍️" not in m.content and m.content != "…"]

    server.wait_for(lambda: len(posts()) >= count, timeout)
    return posts()


def bot_message_ids(server: FakeDiscordServer, channel_id: str) -> list[str]:
    return [m.id for m in server.messages_in(channel_id) if m.author["id"] == server.bot_id]


def model_was_given(server: FakeAnthropicServer, answers: int) -> str:
    """Return everything the model was sent for the `answers`-th answer of the test, as one text."""
    deadline = time.monotonic() + 10
    while len(server.bodies) < answers and time.monotonic() < deadline:
        time.sleep(0.02)  # the request is recorded once its stream is done
    return json.dumps(server.bodies[answers - 1], ensure_ascii=False)


def open_thread(server: FakeDiscordServer, name: str, starter_text: str = "a thread starter") -> str:
    """Open a thread on a message in #general as people do, without the bot; return its id."""
    starter = server.add_thread_message(server.channel_id, starter_text, author=server.bob)
    time.sleep(0.005)
    request = urllib.request.Request(
        f"{server.api_url}/channels/{server.channel_id}/messages/{starter.id}/threads", method="POST",
        data=json.dumps({"name": name}).encode(),
        headers={"Authorization": f"Bot {server.token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return json.load(response)["id"]


def test_what_was_said_in_a_thread_before_the_mention_reaches_the_model_once(
        bot: DiscordBot, discord_server: FakeDiscordServer, anthropic_server: FakeAnthropicServer) -> None:
    server = discord_server
    thread = open_thread(server, "billing release", "Heads-up: the billing rollout is paused")
    server.add_thread_message(thread, "billing deploys from the release-7 branch now", author=server.bob)
    time.sleep(0.005)
    server.add_thread_message(thread, "and its canary runs in eu-west-3", author=server.bob)
    ci = server.add_user("ci-bot", bot=True)
    server.add_thread_message(thread, "build 412 passed", author=ci)
    time.sleep(0.005)  # Discord's ids carry milliseconds: people do not write within the same one
    asked = server.send_message_create(thread, f"<@{server.bot_id}> /ask which branch does billing deploy from?")
    bot_posts(server, thread, 1)

    given = model_was_given(anthropic_server, 1)
    assert "release-7 branch" in given and "eu-west-3" in given and "build 412" not in given
    assert given.index("rollout is paused") < given.index("release-7") < given.index("eu-west-3") \
        < given.index("which branch does billing")  # the message the thread was started on comes first
    (call,) = server.calls_to("GET", rf"/channels/{thread}/messages$")
    assert call.query["before"] == asked.id

    server.send_message_create(thread, "/ask and where does its canary run?")  # no mention needed any more
    bot_posts(server, thread, 2)
    assert "eu-west-3" in model_was_given(anthropic_server, 2)
    assert len(server.calls_to("GET", rf"/channels/{thread}/messages$")) == 1  # read once per thread


def test_without_read_message_history_the_answer_comes_and_the_thread_is_not_asked_again(
        bot: DiscordBot, discord_server: FakeDiscordServer, anthropic_server: FakeAnthropicServer) -> None:
    server = discord_server
    thread = open_thread(server, "billing release")
    server.add_thread_message(thread, "billing deploys from the release-7 branch now", author=server.bob)
    server.history_hidden.add(thread)
    time.sleep(0.005)
    server.send_message_create(thread, f"<@{server.bot_id}> /ask which branch does billing deploy from?")
    assert "went wrong" not in bot_posts(server, thread, 1)[0]
    assert "release-7" not in model_was_given(anthropic_server, 1)

    server.history_hidden.clear()
    server.send_message_create(thread, "/ask and the canary?")
    bot_posts(server, thread, 2)
    assert [call.status for call in server.calls_to("GET", rf"/channels/{thread}/messages$")] == [403]


def test_a_decision_is_kept_when_someone_allowed_reacts_with_a_check_mark(
        bot: DiscordBot, discord_server: FakeDiscordServer, anthropic_server: FakeAnthropicServer) -> None:
    server = discord_server
    eve = server.add_user("eve")
    server.add_member(eve)
    request = server.send_message_create(
        server.channel_id, f"<@{server.bot_id}> /ask we decided staging runs on Thursdays. Anything else to check?")
    thread = request.id  # the bot opens a thread on the message
    proposal_text = bot_posts(server, thread, 2)[1]
    assert proposal_text == "Remember that staging runs on Thursdays? React ✅ to keep it for this channel."
    proposal = bot_message_ids(server, thread)[-1]

    server.send_reaction_add(thread, proposal, user=eve)  # not allowed to talk to the bot
    server.send_reaction_add(thread, proposal, user=server.bob, emoji="👍")
    other = server.send_message_create(server.channel_id, f"<@{server.bot_id}> /ask when does staging run?")
    bot_posts(server, other.id, 1)
    assert "Staging runs on Thursdays" not in model_was_given(anthropic_server, 2)

    server.send_reaction_add(thread, proposal, user=server.bob)
    assert bot_posts(server, thread, 3)[2].startswith("Kept for this channel as `m")
    again = server.send_message_create(server.channel_id, f"<@{server.bot_id}> /ask when does staging run?")
    bot_posts(server, again.id, 1)
    assert "Staging runs on Thursdays" in model_was_given(anthropic_server, 3)
    assert len(bot_posts(server, thread, 3)) == 3  # eve's ✅ and the 👍 said nothing
