"""Durable work: after downtime the bot answers, once each, the messages it missed (Slack and Discord).

The fault injected is the bot being away: the real adapter is closed, people keep writing
(the messages are stored in the local Slack or Discord without an event or a MESSAGE_CREATE,
as the platform would keep them while nobody listens), and a new adapter connects on the same
database. It reads each channel's history since the last message it saw there and answers what
was addressed to it, in the threads it would have used live; a second reconnect answers nothing
again; a message older than the catch-up horizon is not answered. Also: a Socket Mode reconnect
and HTTP mode catch up; a Discord process leaves another shard's channels alone; history the
platform refuses is named in the log.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import pytest

from adapters.discord import DiscordBot
from adapters.slack import SlackAdapter
from bot import constants
from bot.db.cursors import ChannelCursors
from bot.engine import Engine
from bot.queue import InProcessQueue
from tests.adapters.test_slack import CHANNEL, mention, replies, socket_adapter
from tests.fakes.discord_server import FakeDiscordServer
from tests.fakes.slack_fixtures import bolt_web_client
from tests.fakes.slack_server import BOT_USER_ID, FakeSlackServer
from tests.support.engines import EngineBuilder

GREETING = "Hi alice!"
THANKS = "You're welcome!"
DM = "D0ALICE"


def watch_catch_up(caplog: pytest.LogCaptureFixture, platform: str) -> None:
    """Capture the adapter's log down to DEBUG (a channel with nothing missed is logged there), not Bolt's."""
    caplog.set_level(logging.INFO, logger="adapters.slack.bolt")
    caplog.set_level(logging.DEBUG, logger=f"adapters.{platform}")  # the last call sets the handler's level


def caught_up(caplog: pytest.LogCaptureFixture, platform: str, channel: str, times: int = 1) -> list[int]:
    """Wait for the `times`-th catch-up log line about the channel; return each line's count of missed messages."""
    pattern = re.compile(rf"^{platform}: (?:channel )?{channel} had (\d+) missed message")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        counts = [int(m.group(1)) for r in caplog.records if (m := pattern.match(r.getMessage()))]
        if len(counts) >= times:
            return counts
        time.sleep(0.05)
    raise TimeoutError(f"no catch-up log line for {channel} (wanted {times})")


def logged(caplog: pytest.LogCaptureFixture, line: str, level: int = logging.INFO) -> None:
    """Wait until the log holds this line at this level."""
    deadline = time.monotonic() + 30
    while not any(r.levelno == level and r.getMessage() == line for r in caplog.records):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not logged: {line!r}")
        time.sleep(0.05)


def seen_by(positions: Any, channel: str) -> str:
    """Wait until the adapter has noted a message in the channel (events are handled after their ack)."""
    deadline = time.monotonic() + 10
    while channel not in (found := positions()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no message seen in {channel}")
        time.sleep(0.05)
    return found[channel]


def bot_texts(server: FakeSlackServer, channel: str, thread: str) -> list[str]:
    return [m.text for m in server.messages_in_thread(channel, thread) if m.bot_id and m.ts != thread]


def slack_ts(at: float) -> str:
    return f"{at:.6f}"


# -- Slack ------------------------------------------------------------------------------------------


def test_slack_answers_each_mention_reply_and_dm_missed_while_away_once(
        make_engine: EngineBuilder, caplog: pytest.LogCaptureFixture) -> None:
    watch_catch_up(caplog, "slack")
    engine, _ = make_engine(queue=InProcessQueue())
    with FakeSlackServer() as slack:
        with socket_adapter(engine, slack):
            _, seen = mention(slack, "hello")
            replies(slack, seen)
            dm = slack.send_event({"type": "message", "channel": DM, "channel_type": "im", "text": "hello"})
            dm_ts = slack.envelope(dm).event["ts"]
            replies(slack, dm_ts, channel=DM)
        assert slack.calls_to("conversations.history") == []  # a first start has nothing to catch up on

        # Away: two mentions, a reply in the thread the bot is in, a DM, and chatter it ignores.
        first = slack.add_thread_message(CHANNEL, f"<@{BOT_USER_ID}> hello")
        reply = slack.add_thread_message(CHANNEL, "thanks!", thread_ts=seen)
        slack.add_thread_message(CHANNEL, "lunch anyone?")
        second = slack.add_thread_message(CHANNEL, f"<@{BOT_USER_ID}> hello again")
        direct = slack.add_thread_message(DM, "thanks a lot")

        with socket_adapter(engine, slack):
            for thread in (first.ts, second.ts):
                replies(slack, thread)
            replies(slack, seen, count=2)
            replies(slack, direct.ts, channel=DM)
            assert caught_up(caplog, "slack", CHANNEL) == [3]
            assert caught_up(caplog, "slack", DM) == [1]
            logged(caplog, "slack: caught up on 2 channel(s): 4 missed message(s) answered")
            assert engine.queue.wait(timeout=30)
        assert [bot_texts(slack, CHANNEL, t)[0][:len(GREETING)] for t in (first.ts, second.ts)] == [GREETING] * 2
        assert bot_texts(slack, CHANNEL, seen)[1:] == [THANKS]
        assert slack.messages_in_thread(CHANNEL, seen)[-1].ts > reply.ts  # answered in the thread, after the reply
        assert bot_texts(slack, DM, direct.ts) == [THANKS]
        before = len(slack.bot_messages())

        with socket_adapter(engine, slack):  # back once more: everything was answered already
            assert caught_up(caplog, "slack", CHANNEL, times=2) == [3, 0]
            assert caught_up(caplog, "slack", DM, times=2) == [1, 0]
            logged(caplog, "slack: caught up on 2 channel(s): 0 missed message(s) answered")
            assert engine.queue.wait(timeout=30)
            time.sleep(0.3)  # a second answer would have been posted by now
        assert len(slack.bot_messages()) == before
        history = slack.calls_to("conversations.history")
    assert len(history) == 4 and all(float(call["oldest"]) > float(seen) - 60 for call in history)


def test_slack_catches_up_when_socket_mode_reconnects_and_in_http_mode(
        make_engine: EngineBuilder, caplog: pytest.LogCaptureFixture) -> None:
    watch_catch_up(caplog, "slack")
    engine, _ = make_engine(queue=InProcessQueue())
    with FakeSlackServer() as slack:
        with socket_adapter(engine, slack):
            _, seen = mention(slack, "hello")
            replies(slack, seen)
            # Said while the connection was down: Slack asks the client to reconnect (a new hello).
            during_reconnect = slack.add_thread_message(CHANNEL, f"<@{BOT_USER_ID}> hello")
            slack.send_disconnect()
            replies(slack, during_reconnect.ts)
            assert caught_up(caplog, "slack", CHANNEL) == [1]
            assert engine.queue.wait(timeout=30)

        while_down = slack.add_thread_message(CHANNEL, f"<@{BOT_USER_ID}> hello")
        http = SlackAdapter(engine, bolt_web_client(slack), signing_secret="not-used-here")
        engine.attach_port(http.port)
        http.listen("127.0.0.1", 0)
        try:
            replies(slack, while_down.ts)
            assert caught_up(caplog, "slack", CHANNEL, times=2) == [1, 1]
            assert engine.queue.wait(timeout=30)
        finally:
            http.close()
    assert [len(bot_texts(slack, CHANNEL, m.ts)) for m in (during_reconnect, while_down)] == [1, 1]


def test_slack_does_not_answer_what_is_older_than_the_catch_up_horizon(
        make_engine: EngineBuilder, caplog: pytest.LogCaptureFixture) -> None:
    watch_catch_up(caplog, "slack")
    engine, _ = make_engine(queue=InProcessQueue())
    now = time.time()
    with FakeSlackServer() as slack:
        with socket_adapter(engine, slack) as adapter:
            # The last thing the bot saw, two days ago: chatter it ignored, which still moves the cursor.
            slack.send_event({"type": "message", "channel": CHANNEL, "channel_type": "channel", "text": "lunch?",
                              "ts": slack_ts(now - 2 * constants.CATCH_UP_MAX_AGE_S)})
            seen_by(adapter.cursors.snapshot, CHANNEL)
        with engine.db.reading() as session:
            assert ChannelCursors(session).all("slack") == {CHANNEL: slack_ts(now - 2 * constants.CATCH_UP_MAX_AGE_S)}
        stale = slack.add_thread_message(CHANNEL, f"<@{BOT_USER_ID}> hello",
                                         ts=slack_ts(now - constants.CATCH_UP_MAX_AGE_S - 3600))
        fresh = slack.add_thread_message(CHANNEL, f"<@{BOT_USER_ID}> hello")

        with socket_adapter(engine, slack):
            replies(slack, fresh.ts)
            assert caught_up(caplog, "slack", CHANNEL) == [1]
            assert engine.queue.wait(timeout=30)
            time.sleep(0.3)
        assert bot_texts(slack, CHANNEL, stale.ts) == []
        (call,) = slack.calls_to("conversations.history")
    assert float(call["oldest"]) >= now - constants.CATCH_UP_MAX_AGE_S


# -- Discord ----------------------------------------------------------------------------------------


def discord_answers(server: FakeDiscordServer, channel_id: str) -> list[str]:
    return [m.content for m in server.messages_in(channel_id) if m.author["id"] == server.bot_id]


def running_bot(engine: Engine, **client_options: Any) -> DiscordBot:
    bot = DiscordBot(engine, guild_ready_timeout=0.05, **client_options)
    engine.attach_port(bot.port)
    return bot


def test_discord_answers_each_message_missed_while_offline_once(
        make_engine: EngineBuilder, discord_server: FakeDiscordServer, caplog: pytest.LogCaptureFixture) -> None:
    watch_catch_up(caplog, "discord")
    server = discord_server
    engine, _ = make_engine(queue=InProcessQueue(), DISCORD_TOKEN=server.token, **server.env)
    mention = f"<@{server.bot_id}>"
    with running_bot(engine):
        seen = server.send_message_create(server.channel_id, f"{mention} hello")
        server.wait_for(lambda: discord_answers(server, seen.id))  # its thread's id is the message's
        dm = server.create_dm_channel(server.human)
        server.send_message_create(dm, "hello")
        server.wait_for(lambda: discord_answers(server, dm))
        assert engine.queue.wait(timeout=30)

    # Offline: a mention in the channel, a reply in the bot's thread, chatter, another bot.
    other_bot = server.add_user("ci-bot", bot=True)
    server.add_member(other_bot)
    missed: Any = server.add_thread_message(server.channel_id, f"{mention} hello again")
    server.add_thread_message(server.channel_id, "lunch anyone?")
    server.add_thread_message(seen.id, "thanks!")
    server.add_thread_message(seen.id, f"{mention} hello", author=other_bot)
    server.add_thread_message(dm, "thanks a lot")

    with running_bot(engine):
        server.wait_for(lambda: discord_answers(server, missed.id), timeout=30)
        server.wait_for(lambda: len(discord_answers(server, seen.id)) == 2, timeout=30)
        server.wait_for(lambda: len(discord_answers(server, dm)) == 2, timeout=30)
        assert caught_up(caplog, "discord", server.channel_id) == [2]
        assert caught_up(caplog, "discord", dm) == [1]
        assert engine.queue.wait(timeout=30)
    assert discord_answers(server, missed.id)[0].startswith(GREETING)
    assert discord_answers(server, seen.id)[1] == THANKS
    assert discord_answers(server, dm)[1] == THANKS
    assert server.threads[missed.id]["parent_id"] == server.channel_id  # a thread opened on the missed mention
    answered = {channel: len(discord_answers(server, channel))
                for channel in (server.channel_id, seen.id, missed.id, dm)}

    with running_bot(engine):  # online once more: nothing is answered twice
        assert caught_up(caplog, "discord", server.channel_id, times=2) == [2, 0]
        assert caught_up(caplog, "discord", dm, times=2) == [1, 0]
        assert engine.queue.wait(timeout=30)
        time.sleep(0.3)
    assert {channel: len(discord_answers(server, channel)) for channel in answered} == answered


def test_discord_catch_up_is_left_to_the_process_whose_shard_carries_the_channel(
        make_engine: EngineBuilder, discord_server: FakeDiscordServer, caplog: pytest.LogCaptureFixture) -> None:
    watch_catch_up(caplog, "discord")
    server = discord_server
    engine, _ = make_engine(queue=InProcessQueue(), DISCORD_TOKEN=server.token, **server.env)
    with running_bot(engine):
        seen = server.send_message_create(server.channel_id, f"<@{server.bot_id}> hello")
        server.wait_for(lambda: discord_answers(server, seen.id))
        assert engine.queue.wait(timeout=30)
    missed = server.add_thread_message(server.channel_id, f"<@{server.bot_id}> hello again")
    owner = (int(server.guild_id) >> 22) % 2

    def history_reads() -> int:
        return len(server.calls_to("GET", rf"^/channels/{server.channel_id}/messages"))

    with running_bot(engine, shard_id=1 - owner, shard_count=2):  # another process's shard
        logged(caplog, f"discord: channel {server.channel_id} is another shard's; its process catches up there",
               logging.DEBUG)
        assert history_reads() == 0 and discord_answers(server, missed.id) == []
    with running_bot(engine, shard_id=owner, shard_count=2):
        server.wait_for(lambda: discord_answers(server, missed.id), timeout=30)
        assert engine.queue.wait(timeout=30)
    assert history_reads() == 1


def test_history_the_platform_refuses_is_named_in_the_log_and_nothing_breaks(
        make_engine: EngineBuilder, discord_server: FakeDiscordServer, caplog: pytest.LogCaptureFixture) -> None:
    watch_catch_up(caplog, "slack")
    watch_catch_up(caplog, "discord")
    slack_engine, _ = make_engine(queue=InProcessQueue())
    with FakeSlackServer() as slack:
        with socket_adapter(slack_engine, slack):
            _, seen = mention(slack, "hello")
            replies(slack, seen)
        slack.add_thread_message(CHANNEL, f"<@{BOT_USER_ID}> hello")
        slack.refuse("conversations.history", "missing_scope")
        with socket_adapter(slack_engine, slack):
            logged(caplog, f"slack: cannot read what {CHANNEL} said while I was away (missing_scope); its missed "
                           "messages stay unanswered (scopes channels:history, groups:history, im:history)",
                   logging.WARNING)
            logged(caplog, "slack: caught up on 1 channel(s): 0 missed message(s) answered")

    server = discord_server
    engine, _ = make_engine(queue=InProcessQueue(), DISCORD_TOKEN=server.token, **server.env)
    with running_bot(engine):
        seen_here = server.send_message_create(server.channel_id, f"<@{server.bot_id}> hello")
        server.wait_for(lambda: discord_answers(server, seen_here.id))
        assert engine.queue.wait(timeout=30)
    missed = server.add_thread_message(server.channel_id, f"<@{server.bot_id}> hello again")
    server.history_hidden.add(server.channel_id)  # the bot lost Read Message History there
    with running_bot(engine):
        logged(caplog, f"discord: cannot read what channel {server.channel_id} said while I was away (403 Missing "
                       "Access); its missed messages stay unanswered (the bot needs Read Message History)",
               logging.WARNING)
        logged(caplog, "discord: caught up on 1 channel(s): 0 missed message(s) answered")
    assert discord_answers(server, missed.id) == []
    assert not [r for r in caplog.records if r.exc_info]  # no traceback anywhere
