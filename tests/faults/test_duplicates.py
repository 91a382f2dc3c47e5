"""Fault suite, item 1: an event delivered four times gives one reply and one run, on Slack and Discord.

A request for the agent (the toy CLI agent) arrives four times: on Slack as the original
envelope and Slack's three retries (`retry_attempt` 1-3, new envelope ids, the same event id);
on Discord as a MESSAGE_CREATE the gateway dispatches four times. Each platform's thread then
holds one status message, one answer, and the database one run.
"""

from __future__ import annotations

import time

from bot.engine import Engine
from bot.queue import InProcessQueue
from tests.adapters.test_slack import ACK_WITHIN_S, CHANNEL, socket_adapter
from tests.fakes.discord_server import FakeDiscordServer
from tests.fakes.slack_server import BOT_USER_ID, FakeSlackServer
from tests.support.engines import EngineBuilder, rows

TOY = {"plugins": {"modules": ["tests.workers.toy_agent_plugin"]}, "agent": {"name": "toy"}}
REQUEST = "/agent list the files"


def runs(engine: Engine) -> int:
    return rows(engine, "select count(*) from agent_runs")[0][0]


def test_a_slack_event_delivered_four_times_gives_one_reply_and_one_run(make_engine: EngineBuilder) -> None:
    engine, _ = make_engine(queue=InProcessQueue(), manifest=TOY)
    with FakeSlackServer() as slack, socket_adapter(engine, slack):
        first = slack.send_event({"type": "app_mention", "channel": CHANNEL, "text": f"<@{BOT_USER_ID}> {REQUEST}"})
        deliveries = [first]
        for _ in range(3):
            deliveries.append(slack.resend(deliveries[-1], retry_reason="timeout"))
        assert all(slack.wait_for_ack(envelope) < ACK_WITHIN_S for envelope in deliveries)
        thread = slack.envelope(first).event["ts"]
        slack.wait_for(lambda: any("Listed the files" in m.text for m in slack.messages_in_thread(CHANNEL, thread)),
                       timeout=60)
        assert engine.queue.wait(timeout=30)
        time.sleep(0.3)  # a second answer would have been posted by now
        posted = [m for m in slack.messages_in_thread(CHANNEL, thread) if m.bot_id]
    assert len([m for m in posted if m.blocks]) == 1  # one status message
    assert len([m for m in posted if not m.blocks and "Listed the files" in m.text]) == 1  # one answer
    assert runs(engine) == 1


def test_a_discord_message_dispatched_four_times_gives_one_reply_and_one_run(
        make_engine: EngineBuilder, discord_server: FakeDiscordServer) -> None:
    from adapters.discord import DiscordBot

    server = discord_server
    engine, _ = make_engine(queue=InProcessQueue(), DISCORD_TOKEN=server.token, **server.env, manifest=TOY)
    bot = DiscordBot(engine, guild_ready_timeout=0.05)
    engine.attach_port(bot.port)
    with bot:
        request = server.send_message_create(server.channel_id, f"<@{server.bot_id}> {REQUEST}")
        server.send_again(request, times=3)

        def answers() -> list[str]:
            return [m.content for m in server.messages_in(request.id)
                    if m.author["id"] == server.bot_id and "Listed the files" in m.content]

        server.wait_for(answers, timeout=60)
        assert engine.queue.wait(timeout=30)
        time.sleep(0.3)  # a second answer would have been posted by now
        statuses = [m for m in server.messages_in(request.id) if m.author["id"] == server.bot_id and m.embeds]
    assert len(answers()) == 1 and len(statuses) == 1
    assert runs(engine) == 1
