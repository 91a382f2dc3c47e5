"""Fault suite, items 7 and 10: bad input and people who may not ask get a clear answer, no run, no traceback.

Injected through the real platform clients (slack-bolt over Socket Mode, discord.py over the
gateway) from the local fake servers, and on both databases for what the engine stores:

- 7: a message from a person the manifest does not allow, in a channel where the agent is not
  allowed, from another bot, and the bot's own message: none creates a run;
- 10: a malformed platform payload (a message whose text is not text), invalid UTF-8 (a lone
  surrogate a JSON payload can carry), NUL characters (PostgreSQL refuses them in text),
  zero-width and right-to-left text, an empty mention and a 100,000-character message.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text as sql

from adapters.discord import DiscordBot
from bot.engine import NOT_ALLOWED_AGENT, SOMETHING_WENT_WRONG, UNREADABLE, Engine
from bot.queue import InProcessQueue
from tests.adapters.test_slack import CHANNEL, replies, socket_adapter
from tests.fakes.discord_server import FakeDiscordServer
from tests.fakes.slack_server import BOT_USER_ID, FakeSlackServer
from tests.support.engines import EngineBuilder, dispatch_and_wait, rows

#: Text a person may well send: a zero-width space, and Hebrew and a right-to-left override.
TRICKY = "he\u200bllo \u05e9\u05dc\u05d5\u05dd \u202eolleh\u202c"
HUGE = "why " * 25_000  # 100,000 characters


@pytest.fixture
def slack_server() -> Iterator[FakeSlackServer]:
    with FakeSlackServer() as server:
        yield server


def runs(engine: Engine) -> int:
    return rows(engine, "select count(*) from agent_runs")[0][0]


def stored(engine: Engine) -> list[str]:
    with engine.db.reading() as session:
        return list(session.execute(sql("select text from messages where role = 'user' order by id")).scalars())


def test_bad_slack_input_gets_a_clear_answer_and_loses_nothing(make_engine: EngineBuilder,
                                                               slack_server: FakeSlackServer) -> None:
    engine, _ = make_engine(queue=InProcessQueue())
    mention = f"<@{BOT_USER_ID}> "
    sent = {
        "empty": {"text": f"<@{BOT_USER_ID}>"},
        "huge": {"text": mention + HUGE},
        "tricky": {"text": mention + TRICKY},
        "surrogate": {"text": mention + "bad \ud800 bytes"},
        "nul": {"text": mention + "nul\x00byte"},
        "not text": {"text": 12345},
    }
    with socket_adapter(engine, slack_server):
        threads = {name: slack_server.envelope(slack_server.send_event(
            {"type": "app_mention", "channel": CHANNEL, **event})).event["ts"] for name, event in sent.items()}
        answers = {name: replies(slack_server, ts)[0].text for name, ts in threads.items()}
        engine.queue.wait(timeout=30)

    assert all(answer != SOMETHING_WENT_WRONG and "Traceback" not in answer for answer in answers.values()), answers
    assert "/agent" in answers["empty"]  # an empty mention shows what the bot can do
    assert answers["not text"] == UNREADABLE
    texts = stored(engine)
    assert HUGE.strip() in texts and TRICKY in texts  # stored whole, nothing lost
    assert "bad \ufffd bytes" in texts and "nulbyte" in texts
    assert runs(engine) == 0


def test_the_engine_stores_invalid_utf8_and_nul_on_both_databases(make_engine: EngineBuilder,
                                                                  database_url: str) -> None:
    engine, port = make_engine(DATABASE_URL=database_url)
    dispatch_and_wait(engine, "/history with \ud83d and \x00 inside")
    assert stored(engine) == ["/history with \ufffd and  inside"]
    assert port.posts and not any(SOMETHING_WENT_WRONG in text for text in port.posts)


def test_people_and_places_not_allowed_and_bots_create_no_run_on_slack(make_engine: EngineBuilder,
                                                                      slack_server: FakeSlackServer) -> None:
    engine, _ = make_engine(queue=InProcessQueue(), manifest={
        "permissions": {"agent": ["U0OPS"]},
        "channels": {"slack:C0OPS": {"permissions": {"agent": []}}},
    })
    slack_server.add_user("U0OPS", "ops")
    slack_server.add_channel("C0OPS", "ops")
    with socket_adapter(engine, slack_server):
        mention = f"<@{BOT_USER_ID}> /agent delete the build cache"
        refused = slack_server.envelope(slack_server.send_event(
            {"type": "app_mention", "channel": CHANNEL, "text": mention})).event["ts"]
        nowhere = slack_server.envelope(slack_server.send_event(
            {"type": "app_mention", "channel": "C0OPS", "text": mention, "user": "U0OPS"})).event["ts"]
        assert replies(slack_server, refused)[0].text.startswith(NOT_ALLOWED_AGENT.split(" (")[0])
        assert replies(slack_server, nowhere, channel="C0OPS")[0].text.startswith(NOT_ALLOWED_AGENT.split(" (")[0])
        for event in ({"bot_id": "B0OTHER", "subtype": "bot_message"},
                      {"user": BOT_USER_ID, "bot_id": slack_server.bot_id}):
            slack_server.send_event({"type": "message", "channel": CHANNEL, "channel_type": "channel",
                                     "text": "/agent rm -rf /", "thread_ts": refused, **event})
        time.sleep(0.5)  # an answer to the bots' messages would have been posted by now
        engine.queue.wait(timeout=30)
    assert runs(engine) == 0
    assert len([m for m in slack_server.messages_in_thread(CHANNEL, refused) if m.bot_id]) == 1


def test_bad_discord_input_and_bots_get_a_clear_answer_or_nothing(make_engine: EngineBuilder,
                                                                   discord_server: FakeDiscordServer) -> None:
    server = discord_server
    engine, _ = make_engine(queue=InProcessQueue(), DISCORD_TOKEN=server.token, **server.env,
                            manifest={"permissions": {"agent": ["discord:1"]}})
    bot = DiscordBot(engine, guild_ready_timeout=0.05)
    engine.attach_port(bot.port)
    with bot:
        mention = f"<@{server.bot_id}> "
        asked = {name: server.send_message_create(server.channel_id, mention + text)
                 for name, text in {"tricky": TRICKY, "huge": HUGE[:1900], "surrogate": "bad \ud800 bytes",
                                    "agent": "/agent delete the build cache"}.items()}
        answers = {name: server.wait_for(lambda m=message: [p.content for p in server.messages_in(m.id)
                                                            if p.author["id"] == server.bot_id])
                   for name, message in asked.items()}
        other_bot = server.add_user("ci-bot", bot=True)
        server.add_member(other_bot)
        server.send_message_create(asked["tricky"].id, "/agent rm -rf /", author=other_bot)
        time.sleep(0.5)  # an answer to the other bot would have been posted by now
        engine.queue.wait(timeout=30)
    assert all(SOMETHING_WENT_WRONG not in " ".join(texts) for texts in answers.values()), answers
    assert answers["agent"][0].startswith(NOT_ALLOWED_AGENT.split(" (")[0])
    assert TRICKY in stored(engine) and "bad \ufffd bytes" in stored(engine)
    assert len([p for p in server.messages_in(asked["tricky"].id) if p.author["id"] == server.bot_id]) == 1
    assert runs(engine) == 0
