"""A worker posting into Discord through the REST API alone: status embeds, edits, files, rate limits.

The port comes from the engine as a worker gets it (`engine.port_for("discord")`, the
`chat_port` hook, `adapters.discord_port.rest_port`), and talks to the fake Discord on 127.0.0.1
with no gateway connection at all.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.discord_port import DiscordPort
from bot.engine import Engine
from bot.errors import RateLimited
from bot.progress import LiveMessage, render_status
from bot.queue import InProcessQueue
from bot.types import Attachment, Conversation, Reply, RunState, RunStatus, ThreadRef
from tests.fakes.discord_server import FakeDiscordServer
from tests.support.engines import EngineBuilder, make_settings

PATCH_MESSAGE = r"^/channels/\d+/messages/\d+$"
MiB = 1024 * 1024


@pytest.fixture
def engine(discord_server: FakeDiscordServer, make_engine: EngineBuilder) -> Engine:
    built, _ = make_engine(queue=InProcessQueue(), DISCORD_TOKEN=discord_server.token, **discord_server.env)
    return built


@pytest.fixture
def port(engine: Engine) -> Iterator[DiscordPort]:
    """The port the engine uses for Discord, found as a worker process finds it: no adapter runs here."""
    found = engine.port_for("discord")
    assert isinstance(found, DiscordPort)
    yield found
    found.close()


@pytest.fixture
def conversation(engine: Engine, discord_server: FakeDiscordServer) -> Conversation:
    """A conversation in a Discord thread of #general."""
    server = discord_server
    request = urllib.request.Request(
        f"{server.api_url}/channels/{server.channel_id}/threads", method="POST",
        data=json.dumps({"name": "fix the login bug", "type": 11}).encode(),
        headers={"Authorization": f"Bot {server.token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        thread_id = json.load(response)["id"]
    return engine.inbox.conversation(ThreadRef("discord", server.channel_id, thread_id), "fix the login bug")


def status_reply(status: RunStatus) -> Reply:
    return Reply(render_status(status), status=status, partial=not status.state.is_final)


def fields(embed: dict) -> dict[str, str]:
    return {field["name"]: field["value"] for field in embed.get("fields", [])}


def test_without_a_token_there_is_no_discord_port(tmp_path: Path) -> None:
    from adapters.discord_port import rest_port

    engine = Engine.from_settings(make_settings(tmp_path), queue=InProcessQueue(), load_entrypoints=False)
    try:
        assert rest_port(engine) is None
    finally:
        engine.close()


def test_a_worker_shows_a_run_status_through_its_states_and_attaches_files_without_a_gateway(
        engine: Engine, port: DiscordPort, conversation: Conversation, discord_server: FakeDiscordServer) -> None:
    server = discord_server
    queued = RunStatus(5, RunState.QUEUED, "opencode", requested_by="alice", queue_position=1)
    message_id = engine.say(conversation, status_reply(queued))
    shown = server.message(message_id)
    assert shown.content == "" and shown.embeds[0]["title"] == "🕒 Agent run 5 · queued"
    assert fields(shown.embeds[0]) == {"Agent": "opencode", "Asked by": "alice", "Queue": "1st in line"}
    assert shown.components[0]["components"][0]["custom_id"] == "threadwork:cancel:5"

    running = RunStatus(5, RunState.RUNNING, "opencode", requested_by="alice", elapsed_s=75,
                        checklist=[("Write src/login.py", True), ("Run pytest", False), ("Run pytest", None)],
                        latest_text="Fixing the session check.")
    engine.edit(conversation, message_id, status_reply(running))
    embed = server.message(message_id).embeds[0]
    assert embed["title"] == "⏳ Agent run 5 · running" and embed["description"] == "> Fixing the session check."
    assert fields(embed)["Steps"] == "✓ Write src/login.py\n✗ Run pytest\n… Run pytest"
    assert fields(embed)["Elapsed"] == "1:15" and embed["footer"]["text"] == "Cancel with the button or /cancel 5"

    done = RunStatus(5, RunState.DONE, "opencode", requested_by="alice", elapsed_s=140, tokens_in=12_345,
                     tokens_out=678, cost=0.0421, checklist=running.checklist, note="2 file(s) attached.")
    engine.edit(conversation, message_id, status_reply(done), final=True)
    shown = server.message(message_id)
    assert shown.embeds[0]["title"] == "✅ Agent run 5 · done" and "footer" not in shown.embeds[0]
    assert fields(shown.embeds[0])["Tokens"] == "12,345 in / 678 out" and fields(shown.embeds[0])["Cost"] == "$0.0421"
    assert shown.components == []  # no Cancel once the run is over

    log = b"collected 12 items\n12 passed in 0.4s\n"
    file_id = engine.upload(conversation, Attachment("pytest.log", log, title="logs/pytest.log",
                                                     comment="Run 5: logs/pytest.log"))
    uploaded = server.messages_in(conversation.where.thread)[-1]
    assert uploaded.content == "Run 5: logs/pytest.log"
    assert [(a.id, a.filename, a.data, a.description) for a in uploaded.attachments] == [
        (file_id, "pytest.log", log, "logs/pytest.log")]

    engine.upload(conversation, Attachment("report.zip", b"\xff" * (14 * MiB)))
    notice = server.messages_in(conversation.where.thread)[-1]
    assert notice.content == "report.zip is 14 MiB, over this server's 10 MiB limit; it is kept in the workspace."
    assert notice.attachments == [] and not [c for c in server.calls if "report.zip" in c.files]

    assert server.gateway_connections == [] and server.identifies == 0  # REST alone


def test_a_rate_limited_progress_edit_raises_at_once_and_the_live_message_coalesces(
        engine: Engine, port: DiscordPort, conversation: Conversation, discord_server: FakeDiscordServer) -> None:
    server = discord_server
    message_id = engine.say(conversation, Reply("Working… step 0", partial=True))
    server.rate_limit("PATCH", PATCH_MESSAGE, times=1, retry_after=0.5)
    started = time.monotonic()
    with pytest.raises(RateLimited) as raised:
        port.edit(conversation.where, message_id, Reply("Working… step 1", partial=True))
    assert raised.value.retry_after == 0.5 and time.monotonic() - started < 0.4  # no sleeping in the port
    assert server.message(message_id).content == "Working… step 0"

    server.rate_limit("PATCH", PATCH_MESSAGE, times=1, retry_after=0.5)
    live = LiveMessage(post=lambda reply: port.post(conversation.where, reply),
                       edit=lambda mid, reply: port.edit(conversation.where, mid, reply),
                       interval=0.05, message_id=message_id)
    for step in range(2, 30):
        live.update(Reply(f"Working… step {step}", partial=True))
        time.sleep(0.02)
    live.finish(Reply("Done: 29 steps."))

    history = server.message(message_id).history
    assert history[-1] == "Done: 29 steps."
    assert len(history) < 15  # the edits during the wait were coalesced, not queued
    assert [c.status for c in server.calls_to("PATCH", PATCH_MESSAGE)].count(429) == 2


def test_a_final_edit_waits_out_a_rate_limit_and_lands(
        engine: Engine, port: DiscordPort, conversation: Conversation, discord_server: FakeDiscordServer) -> None:
    server = discord_server
    message_id = engine.say(conversation, Reply("thinking…", partial=True))
    server.rate_limit("PATCH", PATCH_MESSAGE, times=1, retry_after=0.3)
    started = time.monotonic()
    engine.edit(conversation, message_id, Reply("The answer is 42."), final=True)
    assert time.monotonic() - started >= 0.3
    assert server.message(message_id).content == "The answer is 42."
    assert [c.status for c in server.calls_to("PATCH", PATCH_MESSAGE)] == [429, 200]


def test_editing_a_long_text_edits_the_first_message_and_keeps_the_follow_ups_in_step(
        engine: Engine, port: DiscordPort, conversation: Conversation, discord_server: FakeDiscordServer) -> None:
    server = discord_server
    thread = conversation.where.thread

    def lines(n: int, word: str) -> str:
        return "".join(f"{word} line {i}: the retry loop backs off and tries again.\n" for i in range(n))

    message_id = engine.say(conversation, Reply("thinking…", partial=True))
    engine.edit(conversation, message_id, Reply(lines(80, "first")), final=True)  # ~4,600 characters
    first = [m.content for m in server.messages_in(thread)]
    assert len(first) == 3 and first[0].startswith("first line 0") and "".join(first) == lines(80, "first")

    engine.edit(conversation, message_id, Reply(lines(40, "second")), final=True)  # ~2,300: two messages
    second = [m.content for m in server.messages_in(thread)]
    assert len(second) == 2 and "".join(second) == lines(40, "second")
    assert server.messages_in(thread)[0].id == message_id  # edited in place, the surplus one deleted

    calls = len(server.calls)
    engine.edit(conversation, message_id, Reply(lines(40, "second")), final=True)
    assert len(server.calls) == calls  # nothing changed, nothing sent


def test_a_reply_longer_than_the_attach_threshold_is_attached_whole(
        engine: Engine, port: DiscordPort, conversation: Conversation, discord_server: FakeDiscordServer) -> None:
    server = discord_server
    text = "".join(f"Paragraph {i}: the migration replays every order in sequence.\n\n" for i in range(250))
    assert len(text) > 12_000
    engine.say(conversation, text)
    (message,) = server.messages_in(conversation.where.thread)
    assert len(message.content) <= 2_000 and message.content.startswith("Paragraph 0:")
    assert re.search(r"[\d,]+ characters in all: the whole answer is attached as answer.md", message.content)
    assert [(a.filename, a.data) for a in message.attachments] == [("answer.md", text.encode())]
