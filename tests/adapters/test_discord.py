"""The Discord bot as people meet it: the real discord.py client against a local Discord.

Every test runs `adapters.discord` (gateway, REST, interactions) against the fake Discord on
127.0.0.1 from `tests.fakes.discord_server`, with a real engine on SQLite and the in-process
queue; answers come from chat commands, so no model is needed.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.discord import DiscordBot, serve
from bot.db.repositories import Conversations, Messages
from bot.engine import Engine, set_current
from bot.progress import render_status
from bot.queue import InProcessQueue
from bot.types import Command, Reply, RunState, RunStatus, ThreadRef
from tests.fakes.discord_server import FakeDiscordServer, point_discord_py_at
from tests.support.engines import EngineBuilder, make_settings, run_bot

#: discord.py waits this long after the last GUILD_CREATE before it is ready (2 s by default).
GUILD_READY_TIMEOUT = 0.05
FENCE_SEAM = re.compile(r"``````[^\n]*\n")  # a fence the adapter closed, then reopened


def engine_for(server: FakeDiscordServer, tmp_path: Path, **env: str) -> Engine:
    settings = make_settings(tmp_path, **{"DISCORD_TOKEN": server.token, **server.env, **env})
    engine = Engine.from_settings(settings, queue=InProcessQueue(), load_entrypoints=False)
    set_current(engine)
    return engine


@pytest.fixture
def engine(discord_server: FakeDiscordServer, make_engine: EngineBuilder) -> Engine:
    built, _ = make_engine(queue=InProcessQueue(), DISCORD_TOKEN=discord_server.token, **discord_server.env)
    return built


@pytest.fixture
def bot(engine: Engine) -> Iterator[DiscordBot]:
    running = DiscordBot(engine, guild_ready_timeout=GUILD_READY_TIMEOUT)
    engine.attach_port(running.port)
    with running:
        yield running
        engine.queue.wait(timeout=30)  # jobs still answering post through this bot's client


def contents(server: FakeDiscordServer, channel_id: str) -> list[str]:
    return [m.content for m in server.messages_in(channel_id)]


def bot_posts(server: FakeDiscordServer, channel_id: str) -> list[str]:
    return [m.content for m in server.messages_in(channel_id) if m.author["id"] == server.bot_id]


def mention(server: FakeDiscordServer, text: str) -> str:
    return f"<@{server.bot_id}> {text}"


def settle(server: FakeDiscordServer, sentinel_channel: str) -> None:
    """Send a message the bot answers and wait for it: everything sent before has been handled."""
    before = len(bot_posts(server, sentinel_channel))
    server.send_message_create(sentinel_channel, "thanks")
    server.wait_for(lambda: len(bot_posts(server, sentinel_channel)) == before + 1)
    time.sleep(0.2)  # messages the bot ignores leave no trace to wait for


def open_thread_as_bot(server: FakeDiscordServer, name: str) -> str:
    """Open a thread in #general that the bot has never talked in (as another feature of it would)."""
    request = urllib.request.Request(
        f"{server.api_url}/channels/{server.channel_id}/threads", method="POST",
        data=json.dumps({"name": name, "type": 11}).encode(),
        headers={"Authorization": f"Bot {server.token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return json.load(response)["id"]


def stored_texts(engine: Engine, where: ThreadRef) -> list[tuple[str, str]]:
    with engine.db.reading() as session:
        conversation = Conversations(session).find(where)
    assert conversation is not None, f"no conversation at {where}"
    return [(entry.role, entry.text) for entry in engine.history(conversation.id)]


def test_a_mention_in_a_channel_opens_a_thread_on_it_and_the_answer_lands_there(
        bot: DiscordBot, engine: Engine, discord_server: FakeDiscordServer) -> None:
    server = discord_server
    request = server.send_message_create(server.channel_id, mention(server, "hello there"))
    server.wait_for(lambda: bot_posts(server, request.id))

    thread = server.threads[request.id]
    assert (thread["parent_id"], thread["name"]) == (server.channel_id, "hello there")
    assert bot_posts(server, request.id) == [
        "Hi alice! Ask me a question, or ask me to change some code. Type `help` for the commands."]
    assert contents(server, server.channel_id) == [request.content]  # nothing posted in the channel itself
    # The bot's mention is not part of what the engine stored.
    assert stored_texts(engine, ThreadRef("discord", server.channel_id, request.id))[0] == ("user", "hello there")


def test_in_a_thread_it_answers_follow_ups_but_ignores_other_threads_bots_and_the_channel(
        bot: DiscordBot, discord_server: FakeDiscordServer) -> None:
    server = discord_server
    request = server.send_message_create(server.channel_id, mention(server, "hello"))
    server.wait_for(lambda: bot_posts(server, request.id))
    server.send_message_create(request.id, "help")  # no mention needed in its own thread
    server.wait_for(lambda: len(bot_posts(server, request.id)) == 2)
    assert "/history [count]" in bot_posts(server, request.id)[1]

    other_bot = server.add_user("ci-bot", bot=True)
    server.add_member(other_bot)
    unknown = open_thread_as_bot(server, "side talk")
    server.send_message_create(request.id, "hello", author=other_bot)
    server.send_message_create(server.channel_id, "hello everyone")
    server.send_message_create(unknown, "hello")
    settle(server, request.id)

    assert len(bot_posts(server, request.id)) == 3  # help, and the sentinel's answer only
    assert bot_posts(server, server.channel_id) == [] and bot_posts(server, unknown) == []
    server.send_message_create(unknown, mention(server, "hello"))  # a mention brings it in
    server.wait_for(lambda: bot_posts(server, unknown))


def test_a_direct_message_is_answered_in_the_dm(bot: DiscordBot, engine: Engine,
                                                discord_server: FakeDiscordServer) -> None:
    server = discord_server
    dm = server.create_dm_channel(server.human)
    server.send_message_create(dm, "hello")
    server.wait_for(lambda: bot_posts(server, dm))
    assert bot_posts(server, dm)[0].startswith("Hi alice!")
    assert stored_texts(engine, ThreadRef("discord", dm, dm))[0] == ("user", "hello")


def long_answer() -> str:
    """A 5,000-character markdown answer: paragraphs, a short code block and one longer than a message."""
    short_code = "```python\n" + "".join(f"total += price_{i}  # item {i}\n" for i in range(30)) + "```\n\n"
    long_code = "```sql\n" + "".join(f"INSERT INTO orders VALUES ({i}, 'customer {i}', {i * 7});\n"
                                     for i in range(60)) + "```\n\n"
    text = ("## Why the invoice totals drift\n\nThe totals are summed in floating point. " * 3 + "\n\n"
            + short_code + "Each line below is one order the migration replays:\n\n" + long_code
            + "Replay them in order and compare the sums.\n\n")
    filler = "Check every step twice before you ship. "
    text += (filler * 200)[: 5_000 - len(text)]
    assert len(text) == 5_000 and len(long_code) > 2_000
    return text


def test_a_5000_character_answer_arrives_whole_and_split_outside_code_blocks(
        bot: DiscordBot, engine: Engine, discord_server: FakeDiscordServer) -> None:
    server = discord_server
    answer = long_answer()
    engine.commands["report"] = Command("report", "a long report", lambda context: answer)
    request = server.send_message_create(server.channel_id, mention(server, "/report"))
    server.wait_for(lambda: sum(len(p) for p in bot_posts(server, request.id)) >= len(answer))
    time.sleep(0.2)

    parts = bot_posts(server, request.id)
    assert len(parts) >= 3 and all(len(part) <= 2_000 for part in parts)
    assert all(len(re.findall(r"^```", part, re.M)) % 2 == 0 for part in parts)  # every part's fences close
    assert FENCE_SEAM.sub("", "".join(parts)) == answer  # nothing lost, nothing repeated
    short_block = answer[answer.index("```python"): answer.index("```\n", answer.index("```python")) + 4]
    assert any(short_block in part for part in parts)  # a block that fits is never cut
    assert stored_texts(engine, ThreadRef("discord", server.channel_id, request.id))[-1] == ("assistant", answer)


def test_a_resumed_connection_replays_nothing_twice(bot: DiscordBot, discord_server: FakeDiscordServer) -> None:
    server = discord_server
    first = server.send_message_create(server.channel_id, mention(server, "hello"))
    server.wait_for(lambda: bot_posts(server, first.id))
    server.drop_connection()
    second = server.send_message_create(server.channel_id, mention(server, "good morning"))  # sent while cut off
    server.wait_for(lambda: server.resumes == 1)
    server.wait_for(lambda: bot_posts(server, second.id))
    # Discord may deliver an event again (a resume from an older sequence): the same payloads once more.
    for event, data in list(server.dispatched):
        if event == "MESSAGE_CREATE" and data["id"] in (first.id, second.id):
            server.dispatch(event, data)
    settle(server, first.id)

    assert (server.identifies, server.resumes) == (1, 1)
    assert sorted(server.threads) == sorted([first.id, second.id])
    assert [c.status for c in server.calls_to("POST", r"/messages/\d+/threads$")] == [201, 201]
    assert len(bot_posts(server, first.id)) == 2  # the greeting and the sentinel's answer
    assert len(bot_posts(server, second.id)) == 1


def test_slash_commands_are_synced_deferred_at_once_and_answered_in_a_thread(
        bot: DiscordBot, discord_server: FakeDiscordServer) -> None:
    server = discord_server
    assert sorted(c["name"] for c in server.commands[None]) == ["agent", "ask", "threadwork"]
    assert [o["name"] for c in server.commands[None] for o in c["options"]] == ["task", "question", "command"]

    server.send_interaction_create(command="threadwork", options=[{"name": "command", "type": 3, "value": "help"}])
    server.wait_for(lambda: server.threads)
    (thread_id,) = server.threads
    server.wait_for(lambda: bot_posts(server, thread_id))
    assert [r.type for r in server.interaction_responses] == [5]  # deferred, "thinking"
    echo = server.message(thread_id)  # the thread is opened on the interaction's response
    assert (echo.content, echo.loading) == ("**alice**: /help", False)
    assert "/history [count]" in bot_posts(server, thread_id)[0]

    server.send_interaction_create(command="ask", options=[{"name": "question", "type": 3, "value": "why?"}],
                                   channel_id=thread_id)
    server.wait_for(lambda: len(bot_posts(server, thread_id)) == 3)
    assert bot_posts(server, thread_id)[1] == "**alice**: /ask why?"
    assert "ANTHROPIC_API_KEY" in bot_posts(server, thread_id)[2]  # no model here: it says how to set one
    assert len(server.threads) == 1  # in a thread, a command is answered in place


def test_the_cancel_button_is_acknowledged_and_dispatches_cancel_from_whoever_clicked(
        bot: DiscordBot, engine: Engine, discord_server: FakeDiscordServer) -> None:
    server = discord_server
    request = server.send_message_create(server.channel_id, mention(server, "hello"))
    server.wait_for(lambda: bot_posts(server, request.id))
    where = ThreadRef("discord", server.channel_id, request.id)
    status = RunStatus(7, RunState.RUNNING, "opencode", requested_by="alice")
    status_id = bot.port.post(where, Reply(render_status(status), status=status, partial=True))
    button = server.message(status_id).components[0]["components"][0]
    assert (button["label"], button["custom_id"]) == ("Cancel", "threadwork:cancel:7")

    bob = server.add_user("bob")
    server.add_member(bob)
    server.send_interaction_create(custom_id="threadwork:cancel:7", message_id=status_id, user=bob)
    server.wait_for(lambda: len(bot_posts(server, request.id)) == 3)

    assert [r.type for r in server.interaction_responses] == [6]  # acknowledged, nothing changed on screen
    with engine.db.reading() as session:
        conversation = Conversations(session).find(where)
        assert conversation is not None
        request_row = [e for e in Messages(session).recent(conversation.id) if e.text == "/cancel 7"]
        assert len(request_row) == 1
        assert Messages(session).get(request_row[0].id)[2] == bob["id"]  # dispatched as bob, in this thread
    assert "7" in bot_posts(server, request.id)[-1]  # the engine's answer to `/cancel 7`, in the thread


def test_serve_attaches_its_port_and_runs_until_stopped(engine: Engine, discord_server: FakeDiscordServer) -> None:
    server = discord_server
    stop = threading.Event()
    serving = threading.Thread(target=serve, args=(engine,), kwargs={"stop": stop}, daemon=True)
    serving.start()
    try:
        server.wait_for(lambda: server.commands.get(None) and server.identifies == 1, timeout=10)
        request = server.send_message_create(server.channel_id, mention(server, "hello"))
        server.wait_for(lambda: bot_posts(server, request.id))
    finally:
        stop.set()
        serving.join(10)
    assert not serving.is_alive()


def test_a_refused_message_content_intent_is_one_clear_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with FakeDiscordServer(privileged_intents_allowed=False) as server:
        undo = point_discord_py_at(server)
        engine = engine_for(server, tmp_path)
        try:
            serve(engine)  # returns: nothing to run
        finally:
            set_current(None)
            engine.close()
            undo()
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert "MESSAGE CONTENT INTENT" in errors[0].getMessage() and "Bot page" in errors[0].getMessage()


def test_a_refused_token_or_an_unreachable_discord_is_one_clear_line(
        discord_server: FakeDiscordServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from tests.support.servers import free_port

    for name, env in (("token", {"DISCORD_TOKEN": "not-the-token"}),
                      ("unreachable", {"DISCORD_API_URL": f"http://127.0.0.1:{free_port()}"})):
        engine = engine_for(discord_server, tmp_path / name, **env)
        try:
            serve(engine)
        finally:
            set_current(None)
            engine.close()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and r.name == "adapters.discord"]
    assert len(errors) == 2 and all(r.exc_info is None for r in caplog.records if r.levelname == "ERROR")
    assert "refused DISCORD_TOKEN" in errors[0] and errors[1].startswith("cannot reach Discord at http://127.0.0.1:")


def test_bot_run_says_what_to_enable_when_discord_refuses_the_intent(tmp_path: Path) -> None:
    with FakeDiscordServer(privileged_intents_allowed=False) as server:
        result = run_bot(["run"], tmp_path, timeout=60, DISCORD_TOKEN=server.token, **server.env)
    assert "MESSAGE CONTENT INTENT" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert server.token not in result.stderr + result.stdout


# -- an agent request, end to end ----------------------------------------------------------------

def _agent_runs_available() -> bool:
    from workers import agent_run

    return hasattr(agent_run, "run_agent")


def _opencode_available() -> bool:
    from tests.fakes.openai_fixtures import opencode_available

    return opencode_available()


@pytest.mark.opencode
@pytest.mark.skipif(not _agent_runs_available(), reason="workers.agent_run has no run_agent yet (issue 4)")
@pytest.mark.skipif(not _opencode_available(), reason="the pinned opencode binary is missing (npm install)")
def test_an_agent_request_shows_its_status_through_its_states_and_attaches_the_file(
        discord_server: FakeDiscordServer, tmp_path: Path) -> None:
    from tests.fakes.openai_server import FakeOpenAIServer, Turn

    server = discord_server
    with FakeOpenAIServer([Turn.write("hello.txt", "hello from the agent\n"), Turn.text("I wrote hello.txt.")]) as model:
        config = model.write_opencode_config(tmp_path / "opencode.json")
        engine = engine_for(server, tmp_path, OPENCODE_CONFIG=str(config))
        try:
            with DiscordBot(engine, guild_ready_timeout=GUILD_READY_TIMEOUT) as bot:
                engine.attach_port(bot.port)
                request = server.send_message_create(server.channel_id, mention(server, "/agent write hello.txt"))
                thread = request.id
                server.wait_for(lambda: any(a.filename == "hello.txt" for m in server.messages_in(thread)
                                            for a in m.attachments), timeout=120)
                server.wait_for(lambda: "I wrote hello.txt." in bot_posts(server, thread), timeout=30)
                engine.queue.wait(timeout=30)
        finally:
            set_current(None)
            engine.close()

    status = next(m for m in server.messages_in(thread) if m.embeds or m.edits)
    posted = next(c.payload for c in server.calls_to("POST", rf"/channels/{thread}/messages$") if c.payload.get("embeds"))
    titles = [posted["embeds"][0]["title"]] + [e["embeds"][0]["title"] for e in status.edits if e.get("embeds")]
    states = [title.rsplit(" · ", 1)[1] for title in titles]
    assert states[0] == "queued" and "running" in states and states[-1] == "done"
    assert posted["components"] and status.components == []  # Cancel while it ran, gone at the end
    (attachment,) = [a for m in server.messages_in(thread) for a in m.attachments if a.filename == "hello.txt"]
    assert attachment.data == b"hello from the agent\n"


@pytest.mark.opencode
@pytest.mark.skipif(not _opencode_available(), reason="the pinned opencode binary is missing (npm install)")
def test_a_file_over_discords_10_mib_goes_up_compressed_or_is_named_in_a_notice(
        discord_server: FakeDiscordServer, tmp_path: Path) -> None:
    from tests.fakes.openai_server import FakeOpenAIServer, Turn

    server = discord_server
    eleven_mib = 11 * 1024 * 1024
    make_files = f"head -c {eleven_mib} /dev/zero > big.log && head -c {eleven_mib} /dev/urandom > noise.bin"
    with FakeOpenAIServer([Turn.bash(make_files), Turn.text("Made two big files.")]) as model:
        config = model.write_opencode_config(tmp_path / "opencode.json")
        engine = engine_for(server, tmp_path, OPENCODE_CONFIG=str(config))
        try:
            with DiscordBot(engine, guild_ready_timeout=GUILD_READY_TIMEOUT) as bot:
                engine.attach_port(bot.port)
                thread = server.send_message_create(server.channel_id, mention(server, "/agent make big files")).id
                server.wait_for(lambda: "Made two big files." in bot_posts(server, thread), timeout=120)
                engine.queue.wait(timeout=30)
        finally:
            set_current(None)
            engine.close()

    attachments = {a.filename: a for m in server.messages_in(thread) for a in m.attachments}
    import io
    import zipfile

    assert "big.log.zip" in attachments and "big.log" not in attachments  # compressed, it fits
    with zipfile.ZipFile(io.BytesIO(attachments["big.log.zip"].data)) as archive:
        assert archive.read("big.log") == b"\0" * eleven_mib
    assert not any(name.startswith("noise.bin") for name in attachments)  # random bytes do not compress
    notice = next(text for text in bot_posts(server, thread) if "noise.bin" in text)
    import sqlite3

    db = sqlite3.connect(tmp_path / "data" / "threadwork.db")
    stored = dict(db.execute("select path, permalink from resources"))
    assert stored["big.log"] and stored["big.log"].endswith("/big.log.zip")  # the uploaded zip's URL
    assert stored["noise.bin"] is None  # stored, never uploaded
    assert "over this platform's 10.0 MiB upload limit even compressed; not uploaded" in notice
