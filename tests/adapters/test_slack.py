"""The Slack adapter as people use it: the real Bolt app and WebClient against a local Slack.

Every test runs the real slack-bolt `App` (Socket Mode over a websocket, or HTTP with signed
requests) and the real `slack_sdk.WebClient` against `tests.fakes.slack_server` on 127.0.0.1,
with a real engine on SQLite and the in-process queue.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text as sql

from adapters.slack import SlackAdapter, SlackPort, serve
from adapters.slack_format import CANCEL_ACTION_ID
from bot.engine import SOMETHING_WENT_WRONG, Engine, set_current
from bot.hookspecs import hookimpl
from bot.queue import InProcessQueue
from bot.types import Message, Reply, RunState, RunStatus, ThreadRef
from tests.fakes.slack_fixtures import bolt_web_client, close_socket_mode
from tests.fakes.slack_server import BOT_USER_ID, DEFAULT_USER_ID, FakeSlackServer, event_callback, sign_request
from tests.support.engines import REPO, bot_env, make_settings

CHANNEL = "C0DEV"
#: Slack wants every ack within 3 s; on localhost ours should take a small fraction of that.
ACK_WITHIN_S = 3.0  # Slack re-sends events not acknowledged within 3 s


@pytest.fixture
def slack_server() -> Iterator[FakeSlackServer]:
    """A local Slack on 127.0.0.1 (Web API and Socket Mode), stopped after the test."""
    with FakeSlackServer() as server:
        yield server



@contextmanager
def socket_adapter(engine: Engine, server: FakeSlackServer) -> Iterator[SlackAdapter]:
    """Run the adapter over Socket Mode against the fake, its port attached to the engine."""
    adapter = SlackAdapter(engine, bolt_web_client(server), app_token=server.app_token)
    engine.attach_port(adapter.port)
    adapter.connect()
    server.wait_for_connection()
    try:
        yield adapter
    finally:
        assert adapter.handler is not None
        close_socket_mode(adapter.handler)  # the fixtures' quick close
        adapter.handler = None
        adapter.close()  # the rest of a close: stop catching up, write the channels' cursors


@pytest.fixture
def slack(engine: Engine, slack_server: FakeSlackServer) -> Iterator[SlackAdapter]:
    with socket_adapter(engine, slack_server) as adapter:
        yield adapter


def mention(server: FakeSlackServer, text: str, **event: Any) -> tuple[str, str]:
    """Send `@bot text` as an app_mention; return (envelope id, the message's ts)."""
    envelope = server.send_event({"type": "app_mention", "channel": CHANNEL, "text": f"<@{BOT_USER_ID}> {text}",
                                  **event})
    return envelope, server.envelope(envelope).event["ts"]


def replies(server: FakeSlackServer, thread_ts: str, count: int = 1, channel: str = CHANNEL) -> list[Any]:
    """Wait for at least `count` bot messages in the thread; return them."""

    def bot_replies() -> list[Any]:
        return [m for m in server.messages_in_thread(channel, thread_ts) if m.bot_id and m.ts != thread_ts]

    server.wait_for(lambda: len(bot_replies()) >= count)
    return bot_replies()


class GatedRouter:
    """A third-party router that records every message and holds each until `gate` opens."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate
        self.seen: list[Message] = []

    @hookimpl(tryfirst=True)
    def route_message(self, message: Message) -> None:
        self.seen.append(message)
        self.gate.wait(10)
        return None


def stored_user_messages(engine: Engine) -> list[tuple[str, str]]:
    with engine.db.reading() as session:
        rows = session.execute(sql("select text, external_id from messages where role = 'user' order by id"))
        return [(row[0], row[1]) for row in rows]


# -- events ----------------------------------------------------------------------------------------


def test_a_mention_gets_a_threaded_answer(slack: SlackAdapter, slack_server: FakeSlackServer,
                                          engine: Engine) -> None:
    envelope, ts = mention(slack_server, "hello")

    assert slack_server.wait_for_ack(envelope) < ACK_WITHIN_S
    (answer,) = replies(slack_server, ts)
    assert answer.thread_ts == ts  # a top-level mention starts a thread under itself
    assert answer.text.startswith("Hi alice!")  # the name came from users.info
    assert stored_user_messages(engine) == [("hello", ts)]  # the bot's own mention is stripped


def test_a_reply_in_a_thread_the_bot_is_in_is_answered_without_a_mention(
        slack: SlackAdapter, slack_server: FakeSlackServer, engine: Engine) -> None:
    _, ts = mention(slack_server, "hello")
    replies(slack_server, ts)

    slack_server.send_event({"type": "message", "channel": CHANNEL, "channel_type": "channel", "text": "thanks!",
                             "thread_ts": ts})
    second = replies(slack_server, ts, count=2)[1]
    assert (second.text, second.thread_ts) == ("You're welcome!", ts)


def test_chatter_the_bot_was_not_asked_into_and_bot_posts_are_ignored(
        slack: SlackAdapter, slack_server: FakeSlackServer, engine: Engine) -> None:
    _, tracked = mention(slack_server, "hello")
    replies(slack_server, tracked)
    ignored = [
        {"text": "lunch?"},  # top-level chatter
        {"text": "help", "thread_ts": "1700000000.000001"},  # a thread the bot is not in
        {"text": "hello", "thread_ts": tracked, "bot_id": "B0OTHER", "subtype": "bot_message"},  # another bot
        {"text": "Hi!", "thread_ts": tracked, "user": BOT_USER_ID, "bot_id": slack_server.bot_id},  # itself
        {"text": "hello", "thread_ts": tracked, "subtype": "message_changed"},  # an edit
        {"text": f"<@{BOT_USER_ID}> hello", "thread_ts": tracked},  # its app_mention twin carries it
    ]
    envelopes = [slack_server.send_event({"type": "message", "channel": CHANNEL, "channel_type": "channel", **event})
                 for event in ignored]
    slack_server.send_event({"type": "message", "channel": CHANNEL, "channel_type": "channel", "text": "thanks",
                             "thread_ts": tracked})

    for envelope in envelopes:
        slack_server.wait_for_ack(envelope)
    replies(slack_server, tracked, count=2)
    time.sleep(0.3)  # an answer to any ignored event would have been posted by now
    assert [m.text for m in slack_server.bot_messages(CHANNEL)][1:] == ["You're welcome!"]
    assert [text for text, _ in stored_user_messages(engine)] == ["hello", "thanks"]
    assert not any(m.bot_id for m in slack_server.messages_in_thread(CHANNEL, "1700000000.000001"))


def test_a_direct_message_is_answered_in_its_thread(slack: SlackAdapter, slack_server: FakeSlackServer) -> None:
    slack_server.add_channel("D0ALICE", is_im=True)
    envelope = slack_server.send_event({"type": "message", "channel": "D0ALICE", "channel_type": "im",
                                        "text": "hello"})
    ts = slack_server.envelope(envelope).event["ts"]
    (answer,) = replies(slack_server, ts, channel="D0ALICE")
    assert answer.thread_ts == ts and answer.text.startswith("Hi alice!")


def test_the_ack_does_not_wait_for_dispatch(slack: SlackAdapter, slack_server: FakeSlackServer, engine: Engine) -> None:
    gate = threading.Event()
    router = GatedRouter(gate)
    engine.pm.register(router, name="gated-router")
    seen = router.seen

    envelope, ts = mention(slack_server, "hello")
    command = slack_server.send_slash_command("/threadwork", "help", channel=CHANNEL)
    try:
        assert slack_server.wait_for_ack(envelope) < ACK_WITHIN_S
        assert slack_server.wait_for_ack(command) < ACK_WITHIN_S
        slack_server.wait_for(lambda: len(seen) == 2)  # both are being dispatched, neither finished
        assert [m for m in slack_server.messages_in_thread(CHANNEL, ts) if m.bot_id] == []
    finally:
        gate.set()
    assert replies(slack_server, ts)[0].text.startswith("Hi alice!")


def test_an_event_delivered_four_times_is_answered_once(slack: SlackAdapter, slack_server: FakeSlackServer,
                                                        engine: Engine) -> None:
    envelope, ts = mention(slack_server, "hello")
    retries = [envelope]
    for _ in range(3):  # Slack's three retries, each of the one before
        retries.append(slack_server.resend(retries[-1], retry_reason="timeout"))
    retries = retries[1:]

    for each in (envelope, *retries):
        assert slack_server.wait_for_ack(each) < ACK_WITHIN_S
    assert slack_server.envelope(retries[-1]).retry_attempt == 3
    answers = replies(slack_server, ts)
    time.sleep(0.3)  # a second answer would have been posted by now
    assert [m.text for m in answers] == [m.text for m in slack_server.bot_messages(CHANNEL)]
    assert len(slack_server.bot_messages(CHANNEL)) == 1
    with engine.db.reading() as session:
        assert session.execute(sql("select count(*) from processed_events")).scalar_one() == 1
    assert stored_user_messages(engine) == [("hello", ts)]


class BrokenRouter:
    """A third-party router with a bug: every message makes it raise."""

    @hookimpl(tryfirst=True)
    def route_message(self, message: Message) -> None:
        raise RuntimeError("database on fire")


def test_a_failure_while_dispatching_is_told_in_one_sentence(
        slack: SlackAdapter, slack_server: FakeSlackServer, engine: Engine) -> None:
    engine.pm.register(BrokenRouter(), name="broken-router")
    _, ts = mention(slack_server, "hello")
    (answer,) = replies(slack_server, ts)
    assert answer.text == SOMETHING_WENT_WRONG
    assert "database on fire" not in answer.text


# -- slash commands and buttons ----------------------------------------------------------------------


def thread_starters(server: FakeSlackServer, count: int) -> list[Any]:
    """Wait for at least `count` top-level bot messages (slash commands' threads); return them."""

    def starters() -> list[Any]:
        return [m for m in server.bot_messages(CHANNEL) if m.thread_ts is None]

    server.wait_for(lambda: len(starters()) >= count)
    return starters()


def test_slash_commands_start_a_thread_and_are_answered_in_it(slack: SlackAdapter,
                                                              slack_server: FakeSlackServer) -> None:
    cases = [("/threadwork", "help", "Commands"), ("/threadwork", "", "Commands"), ("/threadwork", "hello", "Hi alice!"),
             ("/agent", "", "Usage: `/agent"), ("/ask", "what is the build command?", "ANTHROPIC_API_KEY")]
    for n, (command, text, expected) in enumerate(cases, start=1):
        envelope = slack_server.send_slash_command(command, text, channel=CHANNEL)
        assert slack_server.wait_for_ack(envelope) < ACK_WITHIN_S
        starter = thread_starters(slack_server, n)[-1]
        assert starter.text == f"<@{DEFAULT_USER_ID}> {command} {text}".strip()  # says who asked what
        (answer,) = replies(slack_server, starter.ts)
        assert expected in answer.text, (command, text, answer.text)


def test_a_slash_command_where_the_bot_cannot_post_is_answered_privately(
        slack: SlackAdapter, slack_server: FakeSlackServer, engine: Engine) -> None:
    slack_server.add_channel("C0SECRET", is_member=False)
    envelope = slack_server.send_slash_command("/agent", "fix the build", channel="C0SECRET")
    assert slack_server.wait_for_ack(envelope) < ACK_WITHIN_S
    slack_server.wait_for(lambda: slack_server.ephemerals)
    assert "Invite me" in slack_server.ephemerals[0].text
    assert stored_user_messages(engine) == []


def test_the_cancel_button_is_acked_and_becomes_a_cancel_in_the_run_thread(
        slack: SlackAdapter, slack_server: FakeSlackServer, engine: Engine) -> None:
    slack_server.add_user("U0BOB", "bob", real_name="Bob Builder")
    _, parent = mention(slack_server, "hello")
    replies(slack_server, parent)
    where = ThreadRef("slack", CHANNEL, parent)
    status = RunStatus(run_id=7, state=RunState.RUNNING, agent="opencode", requested_by="alice")
    status_ts = slack.port.post(where, Reply("running", status=status))
    opened = threading.Event()
    opened.set()
    router = GatedRouter(opened)
    engine.pm.register(router, name="recording-router")
    seen = router.seen

    envelope = slack_server.send_block_action(CANCEL_ACTION_ID, "7", user="U0BOB", channel=CHANNEL,
                                              message_ts=status_ts)
    assert slack_server.wait_for_ack(envelope) < ACK_WITHIN_S
    slack_server.wait_for(lambda: seen)
    (message,) = seen
    assert (message.where, message.text, message.user_id, message.user_name) == (where, "/cancel 7", "U0BOB", "bob")
    # Whatever /cancel answers (the command, or "I don't know" before it exists), it is in the thread.
    assert replies(slack_server, parent, count=3)[-1].thread_ts == parent


# -- HTTP mode -------------------------------------------------------------------------------------


SECRET = "http-mode-signing-secret"


@pytest.fixture
def http_slack(engine: Engine, slack_server: FakeSlackServer) -> Iterator[tuple[SlackAdapter, str]]:
    adapter = SlackAdapter(engine, bolt_web_client(slack_server), signing_secret=SECRET)
    engine.attach_port(adapter.port)
    port = adapter.listen("127.0.0.1", 0)
    try:
        yield adapter, f"http://127.0.0.1:{port}"
    finally:
        adapter.close()


def http_post(url: str, body: str, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body.encode(), method="POST",
                                     headers={**headers, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_http_mode_refuses_forged_and_stale_requests_and_answers_signed_ones(
        http_slack: tuple[SlackAdapter, str], slack_server: FakeSlackServer, engine: Engine) -> None:
    _, base = http_slack
    ts = "1700000000.000100"
    event = {"type": "app_mention", "channel": CHANNEL, "user": DEFAULT_USER_ID, "text": f"<@{BOT_USER_ID}> hello",
             "ts": ts, "event_ts": ts}
    body = json.dumps(event_callback(event))
    now = int(time.time())
    events = f"{base}/slack/events"

    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as health:
        assert (health.status, json.loads(health.read())) == (200, {"ok": True})
    assert http_post(events, body, sign_request("not-the-secret", body, now))[0] == 401
    assert http_post(events, body, sign_request(SECRET, body, now - 301))[0] == 401
    assert http_post(events, body, {})[0] == 401
    assert stored_user_messages(engine) == []
    with engine.db.reading() as session:
        assert session.execute(sql("select count(*) from processed_events")).scalar_one() == 0

    started = time.monotonic()
    assert http_post(events, body, sign_request(SECRET, body, now))[0] == 200
    assert time.monotonic() - started < ACK_WITHIN_S
    (answer,) = replies(slack_server, ts)
    assert answer.text.startswith("Hi alice!")
    # Slack's retry of the same event (X-Slack-Retry-Num) is acknowledged and does nothing.
    assert http_post(events, body, sign_request(SECRET, body, now, retry_num=1))[0] == 200
    time.sleep(0.2)
    assert len(slack_server.bot_messages(CHANNEL)) == 1
    assert stored_user_messages(engine) == [("hello", ts)]


def test_http_mode_answers_the_url_verification_challenge(http_slack: tuple[SlackAdapter, str]) -> None:
    _, base = http_slack
    body = json.dumps({"token": "x", "challenge": "c-123", "type": "url_verification"})
    status, answer = http_post(f"{base}/slack/events", body, sign_request(SECRET, body, int(time.time())))
    assert status == 200 and b"c-123" in answer


# -- serve: from the environment, as `python -m bot run` starts it ------------------------------------


def test_serve_connects_from_the_environment_and_answers(tmp_path: Path, slack_server: FakeSlackServer) -> None:
    settings = make_settings(tmp_path, SLACK_BOT_TOKEN=slack_server.bot_token, SLACK_APP_TOKEN=slack_server.app_token,
                             SLACK_API_URL=slack_server.api_url.rstrip("/"))
    engine = Engine.from_settings(settings, queue=InProcessQueue(), load_entrypoints=False)
    set_current(engine)
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(engine, stop), daemon=True)
    thread.start()
    try:
        slack_server.wait_for_connection()
        assert isinstance(engine.port_for("slack"), SlackPort)
        _, ts = mention(slack_server, "hello")
        assert replies(slack_server, ts)[0].text.startswith("Hi alice!")
    finally:
        stop.set()
        thread.join(10)
        set_current(None)
        engine.close()
    assert not thread.is_alive()


def test_bot_run_starts_slack_from_the_environment(tmp_path: Path, slack_server: FakeSlackServer) -> None:
    env = bot_env(tmp_path, SLACK_BOT_TOKEN=slack_server.bot_token, SLACK_APP_TOKEN=slack_server.app_token,
                  SLACK_API_URL=slack_server.api_url)
    process = subprocess.Popen([sys.executable, "-m", "bot", "run"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        slack_server.wait_for_connection(timeout=30)
        _, ts = mention(slack_server, "hello")
        assert replies(slack_server, ts)[0].text.startswith("Hi alice!")
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert "discord: not started (set DISCORD_TOKEN)" in stderr and "adapters.slack: started" in stderr
    assert "Traceback" not in stderr


def test_serve_says_in_one_line_which_credentials_are_missing_or_refused(
        tmp_path: Path, slack_server: FakeSlackServer, caplog: pytest.LogCaptureFixture) -> None:
    cases = [
        ({}, "needs SLACK_BOT_TOKEN, SLACK_APP_TOKEN"),
        ({"SLACK_BOT_TOKEN": "xoxb-not-a-real-token", "SLACK_APP_TOKEN": slack_server.app_token},
         "Slack refused SLACK_BOT_TOKEN (invalid_auth)"),
        ({"SLACK_BOT_TOKEN": slack_server.bot_token, "SLACK_APP_TOKEN": "xapp-not-a-real-token"},
         "Slack refused SLACK_APP_TOKEN (invalid_auth)"),
    ]
    for n, (env, expected) in enumerate(cases):
        engine = Engine.from_settings(make_settings(tmp_path / str(n), SLACK_API_URL=slack_server.api_url, **env),
                                      queue=InProcessQueue(), load_entrypoints=False)
        caplog.clear()
        try:
            serve(engine, threading.Event())  # returns instead of waiting: nothing to serve
        finally:
            engine.close()
        (record,) = [r for r in caplog.records if r.name == "adapters.slack"]
        assert record.levelname == "ERROR" and expected in record.getMessage(), record.getMessage()
        assert "not-a-real-token" not in record.getMessage()


# -- an agent run, end to end -----------------------------------------------------------------------


@contextmanager
def agent_engine(tmp_path: Path, *turns: Any) -> Iterator[Engine]:
    """An engine whose agent is the real opencode, its model a scripted server on 127.0.0.1."""
    from tests.fakes.openai_fixtures import opencode_available
    from tests.fakes.openai_server import FakeOpenAIServer
    from workers import agent_run

    if not hasattr(agent_run, "run_agent"):  # issue 4 (agent runs) not landed yet
        pytest.skip("workers.agent_run has no run_agent yet")
    if not opencode_available():
        pytest.skip("the pinned opencode binary is missing: run `npm install` in the checkout")
    model = FakeOpenAIServer(turns).start()
    config = tmp_path / "opencode.json"
    model.write_opencode_config(config)
    settings = make_settings(tmp_path, OPENCODE_CONFIG=str(config), PATH=os.environ.get("PATH", ""))
    engine = Engine.from_settings(settings, queue=InProcessQueue(), load_entrypoints=False)
    set_current(engine)
    try:
        yield engine
    finally:
        set_current(None)
        engine.close()
        model.stop()


def status_heads(message: Any) -> list[str]:
    """The state line of every version of a status message, oldest first."""
    return [next(b for b in v.blocks or [] if b.get("block_id") == "status_head")["text"]["text"]
            for v in message.versions]


def test_an_agent_request_gets_a_live_status_message_and_its_file_in_the_thread(
        tmp_path: Path, slack_server: FakeSlackServer) -> None:
    from tests.fakes.openai_server import Turn

    with agent_engine(tmp_path, Turn.write("hello.py", "print('hello')\n", usage=(900, 12)),
                      Turn.text("I wrote hello.py; it prints hello.", usage=(950, 9))) as engine, \
            socket_adapter(engine, slack_server):
        envelope = slack_server.send_slash_command("/agent", "write hello.py that prints hello", channel=CHANNEL)
        assert slack_server.wait_for_ack(envelope) < ACK_WITHIN_S
        (starter,) = slack_server.wait_for(lambda: [m for m in slack_server.bot_messages(CHANNEL)
                                                    if m.thread_ts is None])
        thread_ts = starter.ts
        slack_server.wait_for(lambda: any("I wrote hello.py" in m.text
                                          for m in slack_server.messages_in_thread(CHANNEL, thread_ts)),
                              timeout=120)

    thread = [m for m in slack_server.messages_in_thread(CHANNEL, thread_ts) if m.ts != thread_ts]
    status = next(m for m in thread if m.blocks)
    heads = status_heads(status)
    assert "queued" in heads[0] and any("running" in head for head in heads) and "done" in heads[-1]
    final_blocks = status.versions[-1].blocks or []
    assert not [b for b in final_blocks if b["type"] == "actions"]  # no Cancel once done
    assert any(b.get("block_id") == "status_steps" and "hello.py" in b["text"]["text"] for b in final_blocks)
    (uploaded,) = [f for f in slack_server.files if f.filename == "hello.py"]
    assert (uploaded.data, uploaded.channel, uploaded.thread_ts) == (b"print('hello')\n", CHANNEL, thread_ts)
    assert all(m.thread_ts == thread_ts for m in thread)  # everything stayed in the thread


def test_the_cancel_button_stops_a_running_agent(tmp_path: Path, slack_server: FakeSlackServer) -> None:
    from tests.fakes.openai_server import Turn

    slack_server.add_user("U0BOB", "bob")
    with agent_engine(tmp_path, Turn.bash("sleep 60", "wait a minute"), Turn.text("never reached")) as engine, \
            socket_adapter(engine, slack_server):
        engine.manifest.permissions.cancel = ["U0BOB"]  # bob may cancel other people's runs
        _, ts = mention(slack_server, "/agent wait a minute")
        status = slack_server.wait_for(lambda: next((m for m in replies(slack_server, ts) if m.blocks), None))
        slack_server.wait_for(lambda: "running" in status_heads(status)[-1], timeout=30)
        started = time.monotonic()
        envelope = slack_server.send_block_action(CANCEL_ACTION_ID, "1", user="U0BOB", channel=CHANNEL,
                                                  message_ts=status.ts)
        assert slack_server.wait_for_ack(envelope) < ACK_WITHIN_S
        slack_server.wait_for(lambda: "cancelled" in status_heads(status)[-1], timeout=30)
        stopped_after = time.monotonic() - started

    assert stopped_after < 10
    final = status.versions[-1].blocks or []
    assert any(b.get("block_id") == "status_note" and "bob" in b["text"]["text"] for b in final)
    assert not [b for b in final if b["type"] == "actions"]
