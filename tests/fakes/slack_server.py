"""A local Slack for tests: Web API + Socket Mode on 127.0.0.1, driven by the real SDKs.

Point the real ``slack_sdk.WebClient`` at it with ``WebClient(token=server.bot_token,
base_url=server.api_url)`` and a real Bolt app's Socket Mode handler follows, because the handler
asks ``app.client`` for ``apps.connections.open`` and gets this server's websocket URL back::

    with FakeSlackServer() as server:
        app = App(client=WebClient(token=server.bot_token, base_url=server.api_url))
        handler = SocketModeHandler(app, app_token=server.app_token)
        handler.connect()
        eid = server.send_event({"type": "app_mention", "channel": "C1", "text": "<@U0FAKEBOT> hi"})
        server.wait_for_ack(eid)                      # seconds from delivery to ack
        server.wait_for(lambda: server.messages_in_thread("C1", ts)[1:])
        handler.close()

What a test can look at (all updated under one lock; ``wait_for`` wakes on every change):
``calls`` (every Web API request, in order, even rejected ones), ``ratelimited`` (the ones
answered 429), ``messages`` (with their edit history), ``ephemerals``, ``files``, ``views``,
``envelopes`` (what was pushed over Socket Mode), ``acks``, ``responses`` (posts to
response_url).

Slack behaviours it imitates (see /work/shared/PLATFORM_FACTS.md): ``{"ok": false, "error"}``
bodies with HTTP 200; ``invalid_auth`` for a missing or unknown token, ``not_allowed_token_type``
for the wrong kind (``apps.connections.open`` takes only the ``xapp-`` token); text over 40,000
chars truncated; more than 50 blocks or a section over 3,000 chars is ``invalid_blocks``;
``chat.postMessage`` at about 1 message/s per channel with a small burst, answered ``429`` +
``Retry-After`` when exceeded (only with rate limits on), and forced 429 storms for any method;
files_upload_v2's three steps; Socket Mode ``hello``, envelopes with ``retry_attempt`` /
``retry_reason``, and acks. It does NOT re-send unacked envelopes by itself: call ``resend``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import math
import mimetypes
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, TypeVar
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

from tests.fakes.loop_thread import LoopThread

T = TypeVar("T")

DEFAULT_BOT_TOKEN = "xoxb-1-fake-bot-token"
DEFAULT_APP_TOKEN = "xapp-1-A0FAKEAPP-1-fake-app-token"
TEAM_ID = "T0FAKETEAM"
TEAM_DOMAIN = "fake-team"
API_APP_ID = "A0FAKEAPP"
BOT_USER_ID = "U0FAKEBOT"
BOT_ID = "B0FAKEBOT"
BOT_NAME = "threadwork"
#: The human who speaks in events when a test does not say who.
DEFAULT_USER_ID = "U0ALICE"
#: The legacy verification token Slack puts in every payload.
VERIFICATION_TOKEN = "fake-verification-token"

MAX_TEXT_CHARS = 40_000
MAX_BLOCKS = 50
MAX_SECTION_TEXT_CHARS = 3_000
#: chat.postMessage: ~1 message per second per channel, with a short burst.
POST_RATE_PER_S = 1.0
POST_BURST = 3
#: Methods that take the app-level (xapp-) token instead of the bot token.
APP_TOKEN_METHODS = frozenset({"apps.connections.open"})
#: Server-side websocket pings keep the built-in client's blocking recv() short, so
#: ``SocketModeHandler.close()`` returns quickly instead of waiting out its 3 s socket timeout.
WS_PING_INTERVAL_S = 0.2


class SlackApiFailure(Exception):
    """Raised inside a method handler to answer ``{"ok": false, "error": code}``."""

    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra


class ApiCall(NamedTuple):
    """One Web API request as the server saw it (token removed from params)."""

    method: str
    params: dict[str, Any]


@dataclass
class MessageVersion:
    """The text and blocks of a message at one point; ``at`` is when that version was set."""

    text: str
    blocks: list[dict[str, Any]] | None
    at: float


@dataclass
class Message:
    """A message in a channel, posted by the bot or by a user (via an event)."""

    channel: str
    ts: str
    text: str
    thread_ts: str | None = None
    blocks: list[dict[str, Any]] | None = None
    user: str | None = None
    bot_id: str | None = None
    subtype: str | None = None
    files: list[str] = field(default_factory=list)
    reactions: dict[str, list[str]] = field(default_factory=dict)
    versions: list[MessageVersion] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.versions:
            self.versions.append(MessageVersion(self.text, self.blocks, time.time()))

    @property
    def edits(self) -> list[MessageVersion]:
        """Every ``chat.update`` applied, oldest first."""
        return self.versions[1:]

    @property
    def history(self) -> list[str]:
        """Every text the message has shown: the original, then each edit."""
        return [v.text for v in self.versions]

    def to_api(self) -> dict[str, Any]:
        """The message as the Web API returns it."""
        d: dict[str, Any] = {"type": "message", "ts": self.ts, "text": self.text}
        for key in ("user", "bot_id", "subtype", "thread_ts", "blocks"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        if self.bot_id:
            d["app_id"] = API_APP_ID
        if self.edits:
            d["edited"] = {"user": self.user, "ts": _ts_from(self.versions[-1].at)}
        if self.files:
            d["files"] = [{"id": f} for f in self.files]
        if self.reactions:
            d["reactions"] = [{"name": n, "users": list(u), "count": len(u)}
                              for n, u in self.reactions.items()]
        return d


@dataclass
class EphemeralMessage:
    """A ``chat.postEphemeral`` (or ephemeral ``respond``) shown only to ``user``."""

    channel: str
    user: str
    ts: str
    text: str
    blocks: list[dict[str, Any]] | None = None
    thread_ts: str | None = None


@dataclass
class UploadedFile:
    """A file from files.getUploadURLExternal; ``data`` is set once the bytes are uploaded,
    ``channel``/``thread_ts``/``share_ts`` once files.completeUploadExternal shared it."""

    file_id: str
    filename: str
    length: int
    title: str | None = None
    data: bytes | None = None
    channel: str | None = None
    thread_ts: str | None = None
    share_ts: str | None = None
    alt_txt: str | None = None
    snippet_type: str | None = None
    completed: bool = False

    def to_api(self, base_url: str) -> dict[str, Any]:
        mimetype = mimetypes.guess_type(self.filename)[0] or "application/octet-stream"
        d: dict[str, Any] = {
            "id": self.file_id, "created": int(time.time()), "name": self.filename,
            "title": self.title or self.filename, "mimetype": mimetype,
            "filetype": self.filename.rsplit(".", 1)[-1] if "." in self.filename else "binary",
            "user": BOT_USER_ID, "size": len(self.data or b""),
            "url_private": f"{base_url}/files-pri/{TEAM_ID}-{self.file_id}/{self.filename}",
            "channels": [self.channel] if self.channel else [],
        }
        if self.channel and self.share_ts:
            share: dict[str, Any] = {"ts": self.share_ts, "reply_count": 0}
            if self.thread_ts:
                share["thread_ts"] = self.thread_ts
            d["shares"] = {"public": {self.channel: [share]}}
        return d


@dataclass
class Envelope:
    """One Socket Mode envelope pushed to the client."""

    envelope_id: str
    type: str
    payload: dict[str, Any]
    accepts_response_payload: bool = False
    retry_attempt: int | None = None
    retry_reason: str | None = None
    sent_at: float = 0.0  # time.monotonic() when written to the websocket

    @property
    def event(self) -> dict[str, Any]:
        """The inner event of an ``events_api`` envelope ({} otherwise)."""
        return dict(self.payload.get("event") or {})

    def to_wire(self) -> dict[str, Any]:
        d: dict[str, Any] = {"envelope_id": self.envelope_id, "payload": self.payload,
                             "type": self.type,
                             "accepts_response_payload": self.accepts_response_payload}
        if self.retry_attempt is not None:
            d["retry_attempt"] = self.retry_attempt
            d["retry_reason"] = self.retry_reason or ""
        return d


@dataclass
class Ack:
    """An acknowledgement the Socket Mode client sent back."""

    envelope_id: str
    payload: dict[str, Any] | None
    received_at: float  # time.monotonic()
    latency: float  # seconds from sending the envelope to receiving this ack


@dataclass
class Channel:
    id: str
    name: str
    is_member: bool = True
    is_private: bool = False
    is_im: bool = False

    def to_api(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name,
                "is_channel": not self.is_im and not self.is_private,
                "is_group": self.is_private, "is_im": self.is_im, "is_private": self.is_private,
                "is_member": self.is_member, "is_archived": False, "created": 1_600_000_000,
                "context_team_id": TEAM_ID}


@dataclass
class _Connection:
    id: int
    ws: web.WebSocketResponse


# ------------------------------------------------------------------------------------------------
# HTTP mode helpers
# ------------------------------------------------------------------------------------------------


def sign_request(signing_secret: str, body: bytes | str, timestamp: int, *,
                 retry_num: int | None = None, retry_reason: str | None = None) -> dict[str, str]:
    """Headers Slack sends with an HTTP-mode request: ``v0=HMAC-SHA256(secret, "v0:ts:body")``.

    Sign with another secret for a forged request, or pass an old ``timestamp`` (Bolt rejects
    anything more than 300 s off) for a stale one. ``retry_num``/``retry_reason`` add Slack's
    ``X-Slack-Retry-Num``/``X-Slack-Retry-Reason`` headers of a re-delivered event.
    """
    raw = body.encode() if isinstance(body, str) else body
    base = b"v0:" + str(int(timestamp)).encode() + b":" + raw
    digest = hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    headers = {"X-Slack-Request-Timestamp": str(int(timestamp)),
               "X-Slack-Signature": f"v0={digest}"}
    if retry_num is not None:
        headers["X-Slack-Retry-Num"] = str(retry_num)
        headers["X-Slack-Retry-Reason"] = retry_reason or "http_timeout"
    return headers


def event_callback(event: dict[str, Any], *, event_id: str | None = None,
                   event_time: int | None = None, team_id: str = TEAM_ID,
                   api_app_id: str = API_APP_ID, bot_user_id: str = BOT_USER_ID) -> dict[str, Any]:
    """The ``event_callback`` body Slack wraps an event in (HTTP body / Socket Mode payload)."""
    return {
        "token": VERIFICATION_TOKEN, "team_id": team_id, "api_app_id": api_app_id,
        "event": event, "type": "event_callback",
        "event_id": event_id or new_event_id(),
        "event_time": int(event_time if event_time is not None else time.time()),
        "authorizations": [{"enterprise_id": None, "team_id": team_id, "user_id": bot_user_id,
                            "is_bot": True, "is_enterprise_install": False}],
        "is_ext_shared_channel": False,
        "event_context": f"4-{secrets.token_hex(24)}",
    }


def new_event_id() -> str:
    return "Ev" + secrets.token_hex(5).upper()


# ------------------------------------------------------------------------------------------------
# Server
# ------------------------------------------------------------------------------------------------


class FakeSlackServer:
    """Web API under ``/api/``, Socket Mode at ``/link/``, file uploads at ``/upload/v1/``."""

    def __init__(self, *, bot_token: str = DEFAULT_BOT_TOKEN, app_token: str = DEFAULT_APP_TOKEN,
                 rate_limits: bool = False, post_rate_per_s: float = POST_RATE_PER_S,
                 post_burst: int = POST_BURST, update_text_limit: int = MAX_TEXT_CHARS,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.team_id, self.api_app_id = TEAM_ID, API_APP_ID
        self.bot_user_id, self.bot_id = BOT_USER_ID, BOT_ID
        self.rate_limits = rate_limits
        self.post_rate_per_s = post_rate_per_s
        self.post_burst = post_burst
        #: chat.update answers ``msg_too_long`` above this many chars (lower it to imitate the
        #: edits of long texts that fail well before 40k).
        self.update_text_limit = update_text_limit
        self.host, self.port = host, port

        self._cond = threading.Condition(threading.RLock())
        self.calls: list[ApiCall] = []
        self.ratelimited: list[ApiCall] = []
        self.messages: list[Message] = []
        self.ephemerals: list[EphemeralMessage] = []
        self.files: list[UploadedFile] = []
        self.views: list[ApiCall] = []
        self.envelopes: list[Envelope] = []
        self.acks: list[Ack] = []
        self.responses: list[tuple[str, dict[str, Any]]] = []
        self.channels: dict[str, Channel] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.add_user(BOT_USER_ID, BOT_NAME, is_bot=True)
        self.add_user(DEFAULT_USER_ID, "alice", real_name="Alice Example")

        self._last_ts_us = 0
        self._ids = itertools.count(1)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._forced: dict[str, list[int]] = {}  # method -> [remaining, retry_after, calls to let pass first]
        self._refusals: dict[str, str] = {}  # method -> the error it answers with (see `refuse`)
        self._upload_tokens: dict[str, str] = {}
        self._response_urls: dict[str, tuple[str, str | None]] = {}  # token -> (channel, msg ts)
        self._tickets: set[str] = set()
        self._conns: list[_Connection] = []
        self._rr = itertools.count()
        self._loop_thread = LoopThread("fake-slack")
        self._runner: web.AppRunner | None = None
        self._methods: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "api.test": lambda p: {"args": p},
            "auth.test": self._auth_test,
            "apps.connections.open": self._apps_connections_open,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "conversations.info": self._conversations_info,
            "conversations.replies": self._conversations_replies,
            "conversations.history": self._conversations_history,
            "users.info": self._users_info,
            "reactions.add": self._reactions_add,
            "reactions.remove": self._reactions_remove,
            "files.getUploadURLExternal": self._files_get_upload_url,
            "files.completeUploadExternal": self._files_complete_upload,
            "views.open": self._view, "views.publish": self._view, "views.update": self._view,
            "views.push": self._view,
        }

    # -- addresses ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        """``base_url`` for ``WebClient`` (ends with '/')."""
        return f"{self.url}/api/"

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "FakeSlackServer":
        self._loop_thread.start(self._astart)
        return self

    def stop(self) -> None:
        self._loop_thread.stop(self._astop)

    def __enter__(self) -> "FakeSlackServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def _astart(self) -> None:
        app = web.Application(client_max_size=1024 ** 3)
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/upload/v1/{token}", self._upload)
        app.router.add_get("/link/", self._socket_mode)
        app.router.add_post("/respond/{token}", self._respond)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _astop(self) -> None:
        for conn in list(self._conns):
            await conn.ws.close()
        if self._runner:
            await self._runner.cleanup()

    # -- configuration ------------------------------------------------------------------------
    def add_channel(self, channel_id: str, name: str | None = None, *, is_member: bool = True,
                    is_private: bool = False, is_im: bool = False) -> Channel:
        """Register a channel. Unregistered ids are created on first use, with the bot a member;
        ``is_member=False`` makes posts and uploads there fail with ``not_in_channel``."""
        with self._cond:
            ch = Channel(channel_id, name or channel_id.lower(), is_member, is_private, is_im)
            self.channels[channel_id] = ch
            return ch

    def add_user(self, user_id: str, name: str, *, real_name: str | None = None,
                 is_bot: bool = False, tz: str = "Europe/Berlin") -> dict[str, Any]:
        """Register a user for users.info (unknown users answer ``user_not_found``)."""
        user = {"id": user_id, "team_id": TEAM_ID, "name": name, "deleted": False,
                "real_name": real_name or name, "tz": tz, "is_bot": is_bot,
                "profile": {"real_name": real_name or name, "display_name": name,
                            **({"bot_id": BOT_ID} if user_id == BOT_USER_ID else {})}}
        with self._cond:
            self.users[user_id] = user
        return user

    def set_rate_limits(self, enabled: bool) -> None:
        """Turn the per-channel chat.postMessage limit on or off (off by default)."""
        with self._cond:
            self.rate_limits = enabled
            self._buckets.clear()

    def rate_limit(self, method: str, *, times: int = 1, retry_after: int = 1, after: int = 0) -> None:
        """Answer ``times`` calls of ``method`` with 429 + ``Retry-After: retry_after`` (whether or not
        rate limits are on), the first ``after`` calls from now let through: a "429 storm"."""
        with self._cond:
            self._forced[method] = [times, retry_after, after]

    def refuse(self, method: str, error: str | None) -> None:
        """Answer every call of ``method`` with ``{"ok": false, "error": error}`` (None: stop refusing).

        Supported for ``conversations.replies`` and ``conversations.history`` (e.g. ``missing_scope``,
        ``not_in_channel``)."""
        with self._cond:
            if error is None:
                self._refusals.pop(method, None)
            else:
                self._refusals[method] = error

    def add_thread_message(self, channel: str, text: str, *, user: str = DEFAULT_USER_ID,
                           thread_ts: str | None = None, bot: bool = False, ts: str | None = None) -> Message:
        """Store a message said earlier, without an event (one the bot was not told about).

        With ``thread_ts`` it is a reply in that thread; ``bot=True`` posts it as this app;
        ``ts`` backdates it (a new, current ts otherwise)."""
        msg = Message(channel, ts or self._new_ts(), text, thread_ts, user=None if bot else user,
                      bot_id=self.bot_id if bot else None)
        self._record(messages=msg)
        return msg

    # -- reading the record -------------------------------------------------------------------
    def calls_to(self, method: str) -> list[dict[str, Any]]:
        """The params of every call to ``method``, in order (429'd ones included)."""
        with self._cond:
            return [c.params for c in self.calls if c.method == method]

    def message(self, channel: str, ts: str) -> Message | None:
        with self._cond:
            return next((m for m in self.messages if m.channel == channel and m.ts == ts), None)

    def messages_in_thread(self, channel: str, thread_ts: str) -> list[Message]:
        """The parent (if known) and its replies, oldest first, file shares included."""
        with self._cond:
            return sorted((m for m in self.messages if m.channel == channel
                           and (m.ts == thread_ts or m.thread_ts == thread_ts)),
                          key=lambda m: _ts_key(m.ts))

    def bot_messages(self, channel: str | None = None) -> list[Message]:
        with self._cond:
            return [m for m in self.messages
                    if m.bot_id == self.bot_id and (channel is None or m.channel == channel)]

    def file(self, file_id: str) -> UploadedFile | None:
        with self._cond:
            return next((f for f in self.files if f.file_id == file_id), None)

    def wait_for(self, predicate: Callable[[], T], timeout: float = 5.0) -> T:
        """Wait until ``predicate()`` is truthy (re-checked on every change); return its value.

        Raises ``TimeoutError``. The predicate runs under the server's lock, so it sees a
        consistent record; keep it quick.
        """
        with self._cond:
            result = self._cond.wait_for(predicate, timeout)
        if not result:
            raise TimeoutError(f"condition not met within {timeout} s")
        return result

    def wait_for_ack(self, envelope_id: str, timeout: float = 5.0) -> float:
        """Wait for the client's ack of ``envelope_id``; return the seconds it took to arrive
        (Slack wants it within 3 s)."""
        ack = self.wait_for(lambda: next((a for a in self.acks if a.envelope_id == envelope_id),
                                         None), timeout)
        return ack.latency

    def ack_for(self, envelope_id: str) -> Ack | None:
        with self._cond:
            return next((a for a in self.acks if a.envelope_id == envelope_id), None)

    def envelope(self, envelope_id: str) -> Envelope:
        with self._cond:
            return next(e for e in self.envelopes if e.envelope_id == envelope_id)

    @property
    def connection_count(self) -> int:
        with self._cond:
            return len(self._conns)

    def wait_for_connection(self, count: int = 1, timeout: float = 5.0) -> None:
        self.wait_for(lambda: len(self._conns) >= count, timeout)

    # -- Socket Mode: pushing to the client -----------------------------------------------------
    def send_event(self, event: dict[str, Any], *, retry_attempt: int = 0, retry_reason: str = "",
                   envelope_id: str | None = None, event_id: str | None = None,
                   timeout: float = 5.0) -> str:
        """Push an ``events_api`` envelope; return its envelope_id.

        Missing ``ts``/``event_ts``/``user``/``team`` of message-like events are filled in, and a
        plain ``message``/``app_mention`` is stored in ``messages`` as the user's message (so
        replies and conversations.replies find their parent). Pass the same ``event_id`` with a
        higher ``retry_attempt`` to imitate Slack re-delivering it (or use :meth:`resend`).
        """
        event = dict(event)
        if event.get("type") in ("message", "app_mention") and "subtype" not in event:
            event.setdefault("user", DEFAULT_USER_ID)
            event.setdefault("ts", self._new_ts())
            event.setdefault("event_ts", event["ts"])
            event.setdefault("team", TEAM_ID)
            event.setdefault("client_msg_id", str(uuid.uuid4()))
            if "channel" in event:
                self._store_user_message(event)
        else:
            event.setdefault("event_ts", self._new_ts())
        payload = event_callback(event, event_id=event_id)
        return self._push(Envelope(envelope_id or _envelope_id(), "events_api", payload,
                                   retry_attempt=retry_attempt, retry_reason=retry_reason),
                          timeout)

    def resend(self, envelope_id: str, *, retry_reason: str = "timeout",
               timeout: float = 5.0) -> str:
        """Re-deliver an envelope's payload as Slack does when it got no ack: same payload and
        event_id, ``retry_attempt`` + 1, a new envelope_id (returned)."""
        old = self.envelope(envelope_id)
        return self._push(Envelope(_envelope_id(), old.type, old.payload,
                                   old.accepts_response_payload,
                                   (old.retry_attempt or 0) + 1, retry_reason), timeout)

    def send_slash_command(self, command: str, text: str = "", user: str = DEFAULT_USER_ID,
                           channel: str = "C0GENERAL", *, timeout: float = 5.0) -> str:
        """Push a ``slash_commands`` envelope; return its envelope_id."""
        payload = {
            "token": VERIFICATION_TOKEN, "team_id": TEAM_ID, "team_domain": TEAM_DOMAIN,
            "channel_id": channel, "channel_name": self._channel(channel).name,
            "user_id": user, "user_name": self.users.get(user, {}).get("name", user),
            "command": command, "text": text, "api_app_id": API_APP_ID,
            "is_enterprise_install": "false",
            "response_url": self._response_url(channel, None), "trigger_id": _trigger_id(),
        }
        return self._push(Envelope(_envelope_id(), "slash_commands", payload, True), timeout)

    def send_block_action(self, action_id: str, value: str = "", user: str = DEFAULT_USER_ID,
                          channel: str = "C0GENERAL", message_ts: str | None = None, *,
                          block_id: str = "actions", timeout: float = 5.0) -> str:
        """Push an ``interactive`` block_actions envelope (a button click on ``message_ts``)."""
        stored = self.message(channel, message_ts) if message_ts else None
        message = stored.to_api() if stored else {"type": "message", "ts": message_ts, "text": ""}
        name = self.users.get(user, {}).get("name", user)
        payload = {
            "type": "block_actions", "token": VERIFICATION_TOKEN, "api_app_id": API_APP_ID,
            "user": {"id": user, "username": name, "name": name, "team_id": TEAM_ID},
            "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
            "container": {"type": "message", "message_ts": message_ts, "channel_id": channel,
                          "is_ephemeral": False},
            "channel": {"id": channel, "name": self._channel(channel).name},
            "message": message, "trigger_id": _trigger_id(),
            "response_url": self._response_url(channel, message_ts),
            "state": {"values": {}},
            "actions": [{"type": "button", "action_id": action_id, "block_id": block_id,
                         "value": value, "text": {"type": "plain_text", "text": value or action_id},
                         "action_ts": self._new_ts()}],
        }
        return self._push(Envelope(_envelope_id(), "interactive", payload), timeout)

    def send_disconnect(self, reason: str = "refresh_requested") -> None:
        """Send ``{"type": "disconnect"}`` to every connection (the client reconnects)."""
        for conn in self._connections():
            self._send_json(conn, {"type": "disconnect", "reason": reason,
                                   "debug_info": {"host": "applink-fake"}}, 5.0)

    def _push(self, env: Envelope, timeout: float) -> str:
        self.wait_for_connection(1, timeout)
        conns = self._connections()
        conn = conns[next(self._rr) % len(conns)]
        with self._cond:
            env.sent_at = time.monotonic()
            self.envelopes.append(env)
            self._cond.notify_all()
        self._send_json(conn, env.to_wire(), timeout)
        return env.envelope_id

    def _connections(self) -> list[_Connection]:
        with self._cond:
            return list(self._conns)

    def _send_json(self, conn: _Connection, obj: dict[str, Any], timeout: float) -> None:
        loop = self._loop_thread.loop
        assert loop is not None, "server not started"
        fut = asyncio.run_coroutine_threadsafe(conn.ws.send_str(json.dumps(obj)), loop)
        fut.result(timeout)

    # -- internals ------------------------------------------------------------------------------
    def _record(self, **lists: Any) -> None:
        with self._cond:
            for name, item in lists.items():
                getattr(self, name).append(item)
            self._cond.notify_all()

    def _new_ts(self) -> str:
        """A unique, increasing Slack ts ("seconds.microseconds")."""
        with self._cond:
            self._last_ts_us = max(int(time.time() * 1_000_000), self._last_ts_us + 1)
            us = self._last_ts_us
        return f"{us // 1_000_000}.{us % 1_000_000:06d}"

    def _channel(self, channel_id: str) -> Channel:
        with self._cond:
            if channel_id not in self.channels:
                self.add_channel(channel_id)
            return self.channels[channel_id]

    def _member_channel(self, params: dict[str, Any], key: str = "channel") -> Channel:
        channel_id = params.get(key)
        if not channel_id:
            raise SlackApiFailure("channel_not_found")
        ch = self._channel(str(channel_id))
        if not ch.is_member:
            raise SlackApiFailure("not_in_channel")
        return ch

    def _store_user_message(self, event: dict[str, Any]) -> None:
        if self.message(event["channel"], event["ts"]) is None:
            self._record(messages=Message(event["channel"], event["ts"], event.get("text", ""),
                                          event.get("thread_ts"), event.get("blocks"),
                                          user=event["user"]))

    def _response_url(self, channel: str, message_ts: str | None) -> str:
        token = secrets.token_hex(8)
        with self._cond:
            self._response_urls[token] = (channel, message_ts)
        return f"{self.url}/respond/{token}"

    def _rate_limit_wait(self, method: str, params: dict[str, Any]) -> int:
        """Seconds the caller must wait (0: go ahead); consumes a post token when allowed."""
        with self._cond:
            forced = self._forced.get(method)
            if forced and forced[2] > 0:
                forced[2] -= 1
            elif forced and forced[0] > 0:
                forced[0] -= 1
                return forced[1]
            if not self.rate_limits or method != "chat.postMessage":
                return 0
            channel = str(params.get("channel", ""))
            now = time.monotonic()
            tokens, last = self._buckets.get(channel, (float(self.post_burst), now))
            tokens = min(float(self.post_burst), tokens + (now - last) * self.post_rate_per_s)
            if tokens >= 1.0:
                self._buckets[channel] = (tokens - 1.0, now)
                return 0
            self._buckets[channel] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / self.post_rate_per_s))

    # -- HTTP handlers --------------------------------------------------------------------------
    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await _read_params(request)
        auth = request.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else params.pop("token", None)
        params.pop("token", None)
        call = ApiCall(method, params)
        self._record(calls=call)
        handler = self._methods.get(method)
        if handler is None:
            return _fail("unknown_method")
        if token not in (self.bot_token, self.app_token):
            return _fail("invalid_auth")
        if (token == self.app_token) != (method in APP_TOKEN_METHODS):
            return _fail("not_allowed_token_type")
        wait = self._rate_limit_wait(method, params)
        if wait:
            self._record(ratelimited=call)
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                     headers={"Retry-After": str(wait)})
        try:
            with self._cond:
                body = handler(params)
                if method.startswith("views."):
                    self.views.append(call)
                self._cond.notify_all()
        except SlackApiFailure as e:
            return _fail(e.error, **e.extra)
        return web.json_response({"ok": True, **body})

    async def _upload(self, request: web.Request) -> web.Response:
        file_id = self._upload_tokens.get(request.match_info["token"])
        if file_id is None:
            return web.Response(status=404, text="upload url not found")
        data = b""
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                if part.filename or part.name == "file":  # type: ignore[union-attr]
                    data = bytes(await part.read())  # type: ignore[union-attr]
                    break
        else:
            data = await request.read()
        with self._cond:
            f = self.file(file_id)
            assert f is not None
            f.data = data
            self._cond.notify_all()
        return web.Response(text=f"OK - {len(data)}")

    async def _respond(self, request: web.Request) -> web.Response:
        """response_url of slash commands and block actions (Bolt's ``respond``)."""
        target = self._response_urls.get(request.match_info["token"])
        if target is None:
            return web.Response(status=404, text="invalid_token")
        body = await request.json()
        channel, message_ts = target
        with self._cond:
            self.responses.append((request.match_info["token"], body))
            original = self.message(channel, message_ts) if message_ts else None
            if body.get("delete_original") and original:
                self.messages.remove(original)
            elif body.get("replace_original") and original:
                self._edit(original, body.get("text", ""), body.get("blocks"))
            elif body.get("response_type") == "in_channel":
                self.messages.append(Message(channel, self._new_ts(), body.get("text", ""),
                                             body.get("thread_ts"), body.get("blocks"),
                                             user=BOT_USER_ID, bot_id=BOT_ID))
            else:
                self.ephemerals.append(EphemeralMessage(channel, "", self._new_ts(),
                                                        body.get("text", ""), body.get("blocks"),
                                                        body.get("thread_ts")))
            self._cond.notify_all()
        return web.json_response({"ok": True})

    async def _socket_mode(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("ticket") not in self._tickets:
            return web.Response(status=401, text="invalid ticket")
        ws = web.WebSocketResponse(autoping=True, timeout=1.0)
        await ws.prepare(request)
        conn = _Connection(next(self._ids), ws)
        self._record(_conns=conn)
        pinger = asyncio.ensure_future(self._ping_loop(ws))
        try:
            await ws.send_str(json.dumps({
                "type": "hello", "num_connections": self.connection_count,
                "debug_info": {"host": "applink-fake", "build_number": 1,
                               "approximate_connection_time": 18060},
                "connection_info": {"app_id": self.api_app_id}}))
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._on_client_message(msg.data)
        finally:
            pinger.cancel()
            with self._cond:
                self._conns.remove(conn)
                self._cond.notify_all()
        return ws

    @staticmethod
    async def _ping_loop(ws: web.WebSocketResponse) -> None:
        while not ws.closed:
            await asyncio.sleep(WS_PING_INTERVAL_S)
            try:
                await ws.ping(b"fake-slack")
            except (ConnectionError, RuntimeError):
                return

    def _on_client_message(self, raw: str) -> None:
        try:
            msg = json.loads(raw)
        except ValueError:
            return
        if not isinstance(msg, dict) or "envelope_id" not in msg:
            return
        now = time.monotonic()
        with self._cond:
            sent = next((e.sent_at for e in self.envelopes
                         if e.envelope_id == msg["envelope_id"]), now)
            self.acks.append(Ack(msg["envelope_id"], msg.get("payload"), now, now - sent))
            self._cond.notify_all()

    # -- Web API methods (run under the lock; raise SlackApiFailure for ok: false) -------------
    def _auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"url": f"https://{TEAM_DOMAIN}.slack.com/", "team": "Fake Team", "user": BOT_NAME,
                "team_id": self.team_id, "user_id": self.bot_user_id, "bot_id": self.bot_id,
                "is_enterprise_install": False}

    def _apps_connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        ticket = str(uuid.uuid4())
        self._tickets.add(ticket)
        return {"url": f"ws://{self.host}:{self.port}/link/?ticket={ticket}&app_id={API_APP_ID}"}

    def _chat_post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        ch = self._member_channel(params)
        text, blocks = _content(params)
        msg = Message(ch.id, self._new_ts(), text[:MAX_TEXT_CHARS],
                      params.get("thread_ts") or None, blocks,
                      user=self.bot_user_id, bot_id=self.bot_id)
        self.messages.append(msg)
        return {"channel": ch.id, "ts": msg.ts, "message": msg.to_api()}

    def _chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        msg = self.message(str(params.get("channel", "")), str(params.get("ts", "")))
        if msg is None:
            raise SlackApiFailure("message_not_found")
        if msg.bot_id != self.bot_id:
            raise SlackApiFailure("cant_update_message")
        text, blocks = _content(params)
        if len(text) > self.update_text_limit:
            raise SlackApiFailure("msg_too_long")
        self._edit(msg, text, blocks)
        return {"channel": msg.channel, "ts": msg.ts, "text": msg.text, "message": msg.to_api()}

    def _edit(self, msg: Message, text: str, blocks: list[dict[str, Any]] | None) -> None:
        msg.text, msg.blocks = text, blocks
        msg.versions.append(MessageVersion(text, blocks, time.time()))

    def _chat_post_ephemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        ch = self._member_channel(params)
        if not params.get("user"):
            raise SlackApiFailure("user_not_in_channel")
        text, blocks = _content(params)
        eph = EphemeralMessage(ch.id, str(params["user"]), self._new_ts(), text, blocks,
                               params.get("thread_ts") or None)
        self.ephemerals.append(eph)
        return {"message_ts": eph.ts}

    def _conversations_info(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("channel"):
            raise SlackApiFailure("channel_not_found")
        return {"channel": self._channel(str(params["channel"])).to_api()}

    def _conversations_replies(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(params.get("channel", "")), str(params.get("ts", ""))
        refused = self._refusals.get("conversations.replies")
        if refused:
            raise SlackApiFailure(refused)
        parent = self.message(channel, ts)
        if parent is None:
            raise SlackApiFailure("thread_not_found")
        root = parent.thread_ts or parent.ts
        thread = self.messages_in_thread(channel, root)
        latest, oldest = params.get("latest"), params.get("oldest")
        inclusive = str(params.get("inclusive", "")).lower() in ("1", "true")
        if latest:
            thread = [m for m in thread if _ts_key(m.ts) < _ts_key(str(latest))
                      or (inclusive and m.ts == str(latest))]
        if oldest:
            thread = [m for m in thread if _ts_key(m.ts) > _ts_key(str(oldest))
                      or (inclusive and m.ts == str(oldest))]
        limit = int(params.get("limit") or 1000)
        start = int(params.get("cursor") or 0)  # the cursor is the offset of the next page
        page = thread[start:start + limit]
        more = start + limit < len(thread)
        out = []
        for m in page:
            d = m.to_api()
            if m.ts == root:
                replies = [r for r in thread if r.ts != root]
                d.update(thread_ts=root, reply_count=len(replies),
                         reply_users=sorted({r.user for r in replies if r.user}))
                if replies:
                    d["latest_reply"] = replies[-1].ts
            out.append(d)
        return {"messages": out, "has_more": more,
                "response_metadata": {"next_cursor": str(start + limit) if more else ""}}

    def _conversations_history(self, params: dict[str, Any]) -> dict[str, Any]:
        """Top-level messages (and thread broadcasts), newest first, between ``oldest`` and ``latest``
        (exclusive unless ``inclusive``), a page of ``limit`` at a time; a thread's parent carries
        ``reply_count`` and ``latest_reply`` as Slack's does."""
        refused = self._refusals.get("conversations.history")
        if refused:
            raise SlackApiFailure(refused)
        channel = str(params.get("channel", ""))
        top = [m for m in self.messages if m.channel == channel
               and (m.thread_ts is None or m.thread_ts == m.ts or m.subtype == "thread_broadcast")]
        top.sort(key=lambda m: _ts_key(m.ts), reverse=True)
        latest, oldest = params.get("latest"), params.get("oldest")
        inclusive = str(params.get("inclusive", "")).lower() in ("1", "true")
        if latest:
            top = [m for m in top if _ts_key(m.ts) < _ts_key(str(latest)) or (inclusive and m.ts == str(latest))]
        if oldest:
            top = [m for m in top if _ts_key(m.ts) > _ts_key(str(oldest)) or (inclusive and m.ts == str(oldest))]
        limit = int(params.get("limit") or 100)
        start = int(params.get("cursor") or 0)  # the cursor is the offset of the next page
        page, more = top[start:start + limit], start + limit < len(top)
        out = []
        for m in page:
            d = m.to_api()
            replies = [r for r in self.messages if r.channel == channel and r.thread_ts == m.ts and r.ts != m.ts]
            if replies:
                d.update(thread_ts=m.ts, reply_count=len(replies),
                         latest_reply=max((r.ts for r in replies), key=_ts_key))
            out.append(d)
        return {"messages": out, "has_more": more,
                "response_metadata": {"next_cursor": str(start + limit) if more else ""}}

    def _users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(str(params.get("user", "")))
        if user is None:
            raise SlackApiFailure("user_not_found")
        return {"user": user}

    def _reaction_target(self, params: dict[str, Any]) -> tuple[Message, str]:
        msg = self.message(str(params.get("channel", "")), str(params.get("timestamp", "")))
        if msg is None:
            raise SlackApiFailure("message_not_found")
        name = str(params.get("name", "")).strip(":")
        if not name:
            raise SlackApiFailure("invalid_name")
        return msg, name

    def _reactions_add(self, params: dict[str, Any]) -> dict[str, Any]:
        msg, name = self._reaction_target(params)
        users = msg.reactions.setdefault(name, [])
        if self.bot_user_id in users:
            raise SlackApiFailure("already_reacted")
        users.append(self.bot_user_id)
        return {}

    def _reactions_remove(self, params: dict[str, Any]) -> dict[str, Any]:
        msg, name = self._reaction_target(params)
        if self.bot_user_id not in msg.reactions.get(name, []):
            raise SlackApiFailure("no_reaction")
        msg.reactions[name].remove(self.bot_user_id)
        if not msg.reactions[name]:
            del msg.reactions[name]
        return {}

    def _files_get_upload_url(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("filename") or params.get("length") in (None, ""):
            raise SlackApiFailure("invalid_arguments")
        file_id = "F" + secrets.token_hex(5).upper()
        token = secrets.token_urlsafe(16)
        self._upload_tokens[token] = file_id
        self.files.append(UploadedFile(file_id, str(params["filename"]), int(params["length"]),
                                       alt_txt=params.get("alt_txt"),
                                       snippet_type=params.get("snippet_type")))
        return {"upload_url": f"{self.url}/upload/v1/{token}", "file_id": file_id}

    def _files_complete_upload(self, params: dict[str, Any]) -> dict[str, Any]:
        entries = _json_value(params.get("files"))
        if not isinstance(entries, list) or not entries:
            raise SlackApiFailure("invalid_arguments")
        channel_id = params.get("channel_id") or (str(params.get("channels") or "").split(",")[0])
        ch = self._member_channel({"channel": channel_id}) if channel_id else None
        thread_ts = params.get("thread_ts") or None
        files = []
        for entry in entries:
            f = self.file(str(entry.get("id")))
            if f is None or f.data is None:
                raise SlackApiFailure("file_not_found")
            f.title = entry.get("title") or f.filename
            f.completed = True
            files.append(f)
        if ch is not None:
            share = Message(ch.id, self._new_ts(), str(params.get("initial_comment") or ""),
                            thread_ts, user=self.bot_user_id, bot_id=self.bot_id,
                            subtype="file_share", files=[f.file_id for f in files])
            self.messages.append(share)
            for f in files:
                f.channel, f.thread_ts, f.share_ts = ch.id, thread_ts, share.ts
        return {"files": [f.to_api(self.url) for f in files]}

    def _view(self, params: dict[str, Any]) -> dict[str, Any]:
        view = _json_value(params.get("view")) or {}
        return {"view": {"id": "V" + secrets.token_hex(5).upper(), "team_id": TEAM_ID,
                         **(view if isinstance(view, dict) else {})}}


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


async def _read_params(request: web.Request) -> dict[str, Any]:
    """Query string merged with a JSON, form-encoded or multipart body."""
    params: dict[str, Any] = dict(request.query)
    if request.method != "POST" or not request.can_read_body:
        return params
    ctype = request.content_type
    if ctype == "application/json":
        body = await request.json()
        if isinstance(body, dict):
            params.update(body)
    elif ctype.startswith("multipart/"):
        post = await request.post()
        params.update({k: v for k, v in post.items() if isinstance(v, str)})
    else:
        params.update(parse_qsl((await request.read()).decode(), keep_blank_values=True))
    return params


def _fail(error: str, **extra: Any) -> web.Response:
    return web.json_response({"ok": False, "error": error, **extra})


def _json_value(value: Any) -> Any:
    """Form-encoded calls carry lists/objects (blocks, files, view) as JSON strings."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            raise SlackApiFailure("invalid_arguments") from None
    return value


def _content(params: dict[str, Any]) -> tuple[str, list[dict[str, Any]] | None]:
    """text and blocks of a chat.* call, validated the way Slack does."""
    text = str(params.get("text") or "")
    blocks = _json_value(params.get("blocks")) or None
    if not text and not blocks and not params.get("attachments"):
        raise SlackApiFailure("no_text")
    if blocks is not None:
        if not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS:
            raise SlackApiFailure("invalid_blocks")
        for b in blocks:
            t = (b.get("text") or {}).get("text", "") if isinstance(b, dict) else ""
            if (isinstance(b, dict) and b.get("type") == "section"
                    and len(t) > MAX_SECTION_TEXT_CHARS):
                raise SlackApiFailure("invalid_blocks")
    return text, blocks


def _ts_key(ts: str) -> tuple[int, int]:
    sec, _, frac = ts.partition(".")
    return int(sec), int(frac or 0)


def _ts_from(t: float) -> str:
    return f"{t:.6f}"


def _envelope_id() -> str:
    return str(uuid.uuid4())


def _trigger_id() -> str:
    return f"{secrets.randbelow(10**12)}.{secrets.randbelow(10**12)}.{secrets.token_hex(16)}"
