"""The fake Slack, driven by the real slack_sdk WebClient and the real slack-bolt handlers."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from slack_bolt import App, BoltRequest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier

from tests.fakes.slack_fixtures import bolt_web_client
from tests.fakes.slack_server import (
    BOT_USER_ID,
    DEFAULT_USER_ID,
    POST_BURST,
    FakeSlackServer,
    event_callback,
    sign_request,
)

CHANNEL = "C0DEV"


# -- Web API ------------------------------------------------------------------------------------


def test_post_reply_and_update_show_up_in_the_thread(slack_server: FakeSlackServer,
                                                     slack_client: WebClient) -> None:
    parent = slack_client.chat_postMessage(channel=CHANNEL, text="run tests please")
    reply = slack_client.chat_postMessage(channel=CHANNEL, text="working…",
                                          thread_ts=parent["ts"])
    slack_client.chat_update(channel=CHANNEL, ts=reply["ts"], text="done: 12 passed")

    assert reply["message"]["thread_ts"] == parent["ts"]
    assert float(reply["ts"]) > float(parent["ts"])
    thread = slack_server.messages_in_thread(CHANNEL, parent["ts"])
    assert [m.text for m in thread] == ["run tests please", "done: 12 passed"]
    assert thread[1].history == ["working…", "done: 12 passed"]
    assert thread[1].bot_id == slack_server.bot_id and thread[1].user == BOT_USER_ID

    replies = slack_client.conversations_replies(channel=CHANNEL, ts=parent["ts"])
    assert [m["text"] for m in replies["messages"]] == ["run tests please", "done: 12 passed"]
    assert replies["messages"][0]["reply_count"] == 1
    assert [c.method for c in slack_server.calls] == [
        "chat.postMessage", "chat.postMessage", "chat.update", "conversations.replies"]


def test_form_encoded_calls_and_blocks_are_understood(slack_server: FakeSlackServer,
                                                      slack_client: WebClient) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}]
    # api_call(data=...) sends application/x-www-form-urlencoded with blocks as a JSON string.
    resp = slack_client.api_call("chat.postMessage",
                                 data={"channel": CHANNEL, "text": "hi",
                                       "blocks": json.dumps(blocks)})
    assert slack_server.message(CHANNEL, resp["ts"]).blocks == blocks  # type: ignore[union-attr]

    too_long = [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}]
    with pytest.raises(SlackApiError) as e:
        slack_client.chat_postMessage(channel=CHANNEL, text="long", blocks=too_long)
    assert e.value.response["error"] == "invalid_blocks"
    with pytest.raises(SlackApiError) as e:
        slack_client.api_call("chat.postMessage", json={"channel": CHANNEL, "text": ""})
    assert e.value.response["error"] == "no_text"


def test_tokens_are_checked(slack_server: FakeSlackServer, slack_client: WebClient) -> None:
    me = slack_client.auth_test()
    assert (me["user_id"], me["bot_id"], me["team_id"]) == (
        slack_server.bot_user_id, slack_server.bot_id, slack_server.team_id)

    for token, error in [("xoxb-wrong", "invalid_auth"), (None, "invalid_auth"),
                         (slack_server.app_token, "not_allowed_token_type")]:
        client = WebClient(token=token, base_url=slack_server.api_url)
        with pytest.raises(SlackApiError) as e:
            client.chat_postMessage(channel=CHANNEL, text="hi")
        assert e.value.response["error"] == error
    with pytest.raises(SlackApiError) as e:
        slack_client.apps_connections_open(app_token=slack_server.bot_token)
    assert e.value.response["error"] == "not_allowed_token_type"
    assert slack_server.messages == []


def test_lookups_reactions_and_ephemerals(slack_server: FakeSlackServer,
                                          slack_client: WebClient) -> None:
    slack_server.add_channel("C0SECRET", "secret", is_member=False)
    assert slack_client.users_info(user=DEFAULT_USER_ID)["user"]["name"] == "alice"
    assert slack_client.conversations_info(channel=CHANNEL)["channel"]["is_member"] is True
    with pytest.raises(SlackApiError) as e:
        slack_client.users_info(user="U0NOBODY")
    assert e.value.response["error"] == "user_not_found"
    with pytest.raises(SlackApiError) as e:
        slack_client.chat_postMessage(channel="C0SECRET", text="hi")
    assert e.value.response["error"] == "not_in_channel"

    ts = slack_client.chat_postMessage(channel=CHANNEL, text="on it")["ts"]
    slack_client.reactions_add(channel=CHANNEL, timestamp=ts, name="eyes")
    with pytest.raises(SlackApiError) as e:
        slack_client.reactions_add(channel=CHANNEL, timestamp=ts, name="eyes")
    assert e.value.response["error"] == "already_reacted"
    assert slack_server.message(CHANNEL, ts).reactions == {"eyes": [BOT_USER_ID]}  # type: ignore[union-attr]

    slack_client.chat_postEphemeral(channel=CHANNEL, user=DEFAULT_USER_ID, text="only you")
    assert [(m.user, m.text) for m in slack_server.ephemerals] == [(DEFAULT_USER_ID, "only you")]
    assert slack_client.views_publish(user_id=DEFAULT_USER_ID,
                                      view={"type": "home", "blocks": []})["ok"] is True
    assert [c.method for c in slack_server.views] == ["views.publish"]


def test_files_upload_v2_lands_in_the_thread(slack_server: FakeSlackServer,
                                             slack_client: WebClient) -> None:
    parent = slack_client.chat_postMessage(channel=CHANNEL, text="build log?")["ts"]
    data = b"line 1\nline 2\n" * 1000
    resp = slack_client.files_upload_v2(channel=CHANNEL, thread_ts=parent, content=data,
                                        filename="build.log", title="Build log",
                                        initial_comment="full log attached")

    (f,) = slack_server.files
    assert (f.data, f.filename, f.title, f.channel, f.thread_ts) == (
        data, "build.log", "Build log", CHANNEL, parent)
    assert resp["file"]["id"] == f.file_id and resp["file"]["size"] == len(data)
    share = slack_server.messages_in_thread(CHANNEL, parent)[-1]
    assert (share.files, share.text, share.thread_ts) == ([f.file_id], "full log attached", parent)
    assert [c.method for c in slack_server.calls][-2:] == [
        "files.getUploadURLExternal", "files.completeUploadExternal"]


def test_post_message_rate_limit_answers_429_with_retry_after(slack_server: FakeSlackServer,
                                                               slack_client: WebClient) -> None:
    slack_server.set_rate_limits(True)
    for i in range(POST_BURST):
        slack_client.chat_postMessage(channel=CHANNEL, text=f"burst {i}")
    with pytest.raises(SlackApiError) as e:
        slack_client.chat_postMessage(channel=CHANNEL, text="one too many")
    assert e.value.response.status_code == 429
    assert e.value.response["error"] == "ratelimited"
    assert int(e.value.response.headers["Retry-After"]) >= 1
    # The limit is per channel; the refused message was not posted.
    slack_client.chat_postMessage(channel="C0OTHER", text="elsewhere")
    assert [m.text for m in slack_server.messages][-1] == "elsewhere"
    assert "one too many" not in [m.text for m in slack_server.messages]
    assert len(slack_server.ratelimited) == 1


def test_update_429_storm(slack_server: FakeSlackServer, slack_client: WebClient) -> None:
    ts = slack_client.chat_postMessage(channel=CHANNEL, text="step 1")["ts"]
    slack_server.rate_limit("chat.update", times=2, retry_after=7)
    for _ in range(2):
        with pytest.raises(SlackApiError) as e:
            slack_client.chat_update(channel=CHANNEL, ts=ts, text="step 2")
        assert e.value.response.status_code == 429
        assert e.value.response.headers["Retry-After"] == "7"
    slack_client.chat_update(channel=CHANNEL, ts=ts, text="step 2")
    assert slack_server.message(CHANNEL, ts).history == ["step 1", "step 2"]  # type: ignore[union-attr]
    assert len(slack_server.calls_to("chat.update")) == 3


# -- Socket Mode --------------------------------------------------------------------------------


def _bolt_app(server: FakeSlackServer, **kw: Any) -> App:
    return App(client=bolt_web_client(server), **kw)


def test_bolt_socket_mode_app_mention_is_acked_and_answered_in_thread(
        slack_server: FakeSlackServer, socket_mode: Any) -> None:
    app = _bolt_app(slack_server)

    @app.event("app_mention")
    def on_mention(event: dict[str, Any], say: Any) -> None:
        say(text=f"on it: {event['text'].split('> ', 1)[1]}",
            thread_ts=event.get("thread_ts") or event["ts"])

    socket_mode(app)
    eid = slack_server.send_event({"type": "app_mention", "channel": CHANNEL,
                                   "text": f"<@{BOT_USER_ID}> fix the build"})
    ts = slack_server.envelope(eid).event["ts"]

    assert slack_server.wait_for_ack(eid, timeout=3) < 3
    reply = slack_server.wait_for(lambda: slack_server.messages_in_thread(CHANNEL, ts)[1:])
    assert [m.text for m in reply] == ["on it: fix the build"]
    assert reply[0].thread_ts == ts and reply[0].bot_id == slack_server.bot_id
    assert slack_server.envelope(eid).to_wire()["retry_attempt"] == 0


def test_retried_event_arrives_again_with_same_event_id(slack_server: FakeSlackServer,
                                                         socket_mode: Any) -> None:
    app = _bolt_app(slack_server)
    seen: list[tuple[str, str | None]] = []
    lock = threading.Lock()

    @app.event("app_mention")
    def on_mention(body: dict[str, Any], request: BoltRequest) -> None:
        with lock:
            seen.append((body["event_id"], request.headers.get("x-slack-retry-num", [None])[0]))

    socket_mode(app)
    first = slack_server.send_event({"type": "app_mention", "channel": CHANNEL,
                                     "text": f"<@{BOT_USER_ID}> hi"})
    second = slack_server.resend(first, retry_reason="timeout")
    slack_server.wait_for_ack(first)
    slack_server.wait_for_ack(second)
    slack_server.wait_for(lambda: len(seen) == 2)

    event_id = slack_server.envelope(first).payload["event_id"]
    assert sorted(seen, key=lambda s: s[1] or "") == [(event_id, "0"), (event_id, "1")]
    assert slack_server.envelope(second).retry_reason == "timeout"


def test_slash_command_and_button_through_socket_mode(slack_server: FakeSlackServer,
                                                      slack_client: WebClient,
                                                      socket_mode: Any) -> None:
    app = _bolt_app(slack_server)

    @app.command("/threadwork")
    def on_command(ack: Any, respond: Any, command: dict[str, Any]) -> None:
        ack(text="queued")
        respond(text=f"starting {command['text']}", response_type="in_channel")

    @app.action("cancel")
    def on_cancel(ack: Any, respond: Any, body: dict[str, Any]) -> None:
        ack()
        respond(text=f"cancelled {body['actions'][0]['value']}", replace_original=True)

    socket_mode(app)
    eid = slack_server.send_slash_command("/threadwork", "deploy", channel=CHANNEL)
    slack_server.wait_for_ack(eid)
    assert slack_server.ack_for(eid).payload == {"text": "queued"}  # type: ignore[union-attr]
    slack_server.wait_for(lambda: [m for m in slack_server.messages
                                   if m.text == "starting deploy"])

    status_ts = slack_client.chat_postMessage(channel=CHANNEL, text="running job 7")["ts"]
    eid = slack_server.send_block_action("cancel", "job-7", channel=CHANNEL,
                                         message_ts=status_ts)
    slack_server.wait_for_ack(eid)
    msg = slack_server.message(CHANNEL, status_ts)
    slack_server.wait_for(lambda: msg.text == "cancelled job-7")  # type: ignore[union-attr]
    assert msg.history == ["running job 7", "cancelled job-7"]  # type: ignore[union-attr]


# -- HTTP mode ----------------------------------------------------------------------------------


def test_signed_forged_and_stale_http_events(slack_server: FakeSlackServer) -> None:
    secret = "s3cret"
    app = _bolt_app(slack_server, signing_secret=secret)

    @app.event("app_mention")
    def on_mention(event: dict[str, Any], say: Any) -> None:
        say(text="hello over http", thread_ts=event["ts"])

    event = {"type": "app_mention", "channel": CHANNEL, "user": DEFAULT_USER_ID,
             "text": f"<@{BOT_USER_ID}> ping", "ts": "1700000000.000100"}
    body = json.dumps(event_callback(event))
    now = int(time.time())

    def post(headers: dict[str, str]) -> int:
        headers = {**headers, "Content-Type": "application/json"}
        return app.dispatch(BoltRequest(body=body, headers=headers)).status

    assert SignatureVerifier(secret).is_valid_request(body, sign_request(secret, body, now))
    assert post(sign_request("not-the-secret", body, now)) == 401
    assert post(sign_request(secret, body, now - 600)) == 401
    assert post(sign_request(secret, body, now)) == 200
    slack_server.wait_for(lambda: slack_server.bot_messages(CHANNEL))
    assert [(m.text, m.thread_ts) for m in slack_server.bot_messages(CHANNEL)] == [
        ("hello over http", "1700000000.000100")]


def test_replies_page_with_a_cursor_and_stop_at_latest(slack_server: FakeSlackServer,
                                                       slack_client: WebClient) -> None:
    parent = slack_server.add_thread_message("C1", "parent", user="U0BOB")
    for n in range(4):
        slack_server.add_thread_message("C1", f"reply {n}", user="U0BOB", thread_ts=parent.ts)
    last = slack_server.add_thread_message("C1", "the mention", thread_ts=parent.ts)
    texts, cursor = [], None
    while True:
        page = slack_client.conversations_replies(channel="C1", ts=parent.ts, limit=2, cursor=cursor,
                                                  latest=last.ts, inclusive=False)
        texts += [m["text"] for m in page["messages"]]
        cursor = page["response_metadata"]["next_cursor"]
        if not cursor:
            assert page["has_more"] is False
            break
    assert texts == ["parent", "reply 0", "reply 1", "reply 2", "reply 3"]
    assert len(slack_server.calls_to("conversations.replies")) == 3

    slack_server.refuse("conversations.replies", "missing_scope")
    with pytest.raises(SlackApiError) as refused:
        slack_client.conversations_replies(channel="C1", ts=parent.ts)
    assert refused.value.response["error"] == "missing_scope"
