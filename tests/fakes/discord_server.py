"""A local Discord for tests: REST API v10 and the gateway, on 127.0.0.1, for the real discord.py.

``FakeDiscordServer`` runs an aiohttp application in a background thread with its own event
loop. It serves ``/api/v10/...`` (the REST routes a chat bot uses), the gateway websocket on
``/`` (first connection) and ``/resume`` (the ``resume_gateway_url`` handed out in READY), and
``/attachments/...`` (the bytes of uploaded files). Everything the bot does is recorded under a
``threading.Condition``: tests read ``server.calls``, ``server.messages``, ``server.threads``,
``server.interaction_responses`` ... and block on ``server.wait_for(predicate)``.

Behaviour copied from Discord because bots depend on it:

* Every REST route except ``GET /gateway``, ``/interactions/...`` and ``/webhooks/{id}/{token}``
  needs ``Authorization: Bot <token>``; otherwise 401 ``{"message": "401: Unauthorized", "code": 0}``.
* JSON responses carry exactly ``Content-Type: application/json`` (discord.py parses nothing
  else). A 429 carries ``Via`` (discord.py treats a 429 without it as a Cloudflare ban and
  raises instead of retrying), ``Retry-After`` and ``X-RateLimit-*``.
* Messages the bot sends come back to it as MESSAGE_CREATE (and edits as MESSAGE_UPDATE), like
  on Discord: a bot must ignore its own messages.
* A session without the MESSAGE_CONTENT intent receives guild messages with empty content,
  embeds, attachments and components, unless the message mentions the bot or is its own.
  Asking for a privileged intent (MESSAGE_CONTENT, GUILD_MEMBERS, GUILD_PRESENCES) while the
  application may not (``privileged_intents_allowed=False``) closes the gateway with 4014.
* Limits: 2,000 characters of content, 10 embeds of 6,000 characters in total, 10 files of
  10 MiB: breaking them gives Discord's 400 (code 50035) or 413 (code 40005).
* Interactions must be answered within 3 s (``interaction_ack_timeout``), only once (40060);
  a deferred "thinking" response leaves a loading message that ``PATCH @original`` or the
  first followup replaces.

Transport compression: discord.py dials ``?v=10&encoding=json&compress=zlib-stream`` (or
``zstd-stream`` when a zstd module is importable). The server answers ``zlib-stream`` with
zlib-compressed binary frames ending in ``Z_SYNC_FLUSH`` and any other value with plain text
frames, which discord.py also accepts.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import secrets
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol, TypeVar

from aiohttp import WSMsgType, web

T = TypeVar("T")
Json = dict[str, Any]

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1_420_070_400_000
DEFAULT_HEARTBEAT_INTERVAL_MS = 41_250
INTERACTION_ACK_TIMEOUT_S = 3.0
MAX_CONTENT_CHARS = 2_000
MAX_EMBEDS = 10
MAX_EMBED_TOTAL_CHARS = 6_000
MAX_FILES = 10
MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_REQUEST_BYTES = 25 * 1024 * 1024
ALL_PERMISSIONS = str((1 << 51) - 1)

# Gateway intents (https://discord.com/developers/docs/events/gateway#gateway-intents)
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_PRESENCES = 1 << 8
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_GUILD_MESSAGE_REACTIONS = 1 << 10
INTENT_DIRECT_MESSAGE_REACTIONS = 1 << 13
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES | INTENT_MESSAGE_CONTENT
# Application flags telling the bot which privileged intents it may ask for.
APP_FLAGS_PRIVILEGED_ALLOWED = (1 << 13) | (1 << 15) | (1 << 19)

MESSAGE_FLAG_EPHEMERAL = 1 << 6
MESSAGE_FLAG_LOADING = 1 << 7

CHANNEL_TEXT, CHANNEL_DM, CHANNEL_CATEGORY = 0, 1, 4
CHANNEL_PUBLIC_THREAD, CHANNEL_PRIVATE_THREAD, CHANNEL_FORUM = 11, 12, 15

# Interaction callback types (https://discord.com/developers/docs/interactions/receiving-and-responding)
CALLBACK_PONG, CALLBACK_MESSAGE, CALLBACK_DEFERRED_MESSAGE = 1, 4, 5
CALLBACK_DEFERRED_UPDATE, CALLBACK_UPDATE_MESSAGE = 6, 7

MENTION_RE = re.compile(r"<@!?(\d+)>")
# Where the middleware leaves the parsed request body for the handlers.
_BODY_KEY: Any = web.RequestKey("body", object) if hasattr(web, "RequestKey") else "body"


def now_iso() -> str:
    """The current time as Discord writes timestamps (ISO 8601, UTC offset)."""
    return datetime.now(timezone.utc).isoformat()


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass
class Call:
    """One REST request as received: ``path`` is relative to ``/api/v10``."""

    method: str
    path: str
    query: dict[str, str]
    payload: Any
    files: list[str]
    status: int = 0


@dataclass
class FakeAttachment:
    """A file uploaded with a message, with its bytes."""

    id: str
    filename: str
    data: bytes
    content_type: str | None = None
    description: str | None = None


@dataclass
class FakeMessage:
    """A message as a user would see it now; ``history`` holds the content of every version."""

    id: str
    channel_id: str
    author: Json
    content: str = ""
    embeds: list[Json] = field(default_factory=list)
    components: list[Json] = field(default_factory=list)
    attachments: list[FakeAttachment] = field(default_factory=list)
    mentions: list[Json] = field(default_factory=list)
    flags: int = 0
    type: int = 0
    timestamp: str = field(default_factory=now_iso)
    edited_timestamp: str | None = None
    message_reference: Json | None = None
    webhook_id: str | None = None
    interaction_metadata: Json | None = None
    thread_id: str | None = None
    reactions: list[str] = field(default_factory=list)
    deleted: bool = False
    edits: list[Json] = field(default_factory=list)  # the PATCH payloads, in order
    history: list[str] = field(default_factory=list)  # content of each version, original first

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & MESSAGE_FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        """True while it is the "Bot is thinking..." placeholder of a deferred interaction."""
        return bool(self.flags & MESSAGE_FLAG_LOADING)


@dataclass
class InteractionResponse:
    """One ``POST /interactions/{id}/{token}/callback``."""

    interaction_id: str
    token: str
    type: int
    data: Json


@dataclass
class GatewayConnection:
    """One websocket connection: the path (``/`` or ``/resume``) and query it dialled."""

    path: str
    query: dict[str, str]


@dataclass
class _Upload:
    index: int
    filename: str
    data: bytes
    content_type: str | None


@dataclass
class _Body:
    payload: Any = None
    uploads: list[_Upload] = field(default_factory=list)


@dataclass
class _RateLimitRule:
    method: str
    pattern: re.Pattern[str]
    remaining: int
    retry_after: float
    is_global: bool
    bucket: str


@dataclass(eq=False)
class _Interaction:
    id: str
    token: str
    type: int
    channel_id: str
    payload: Json
    created: float = field(default_factory=time.monotonic)
    response_type: int | None = None
    original_id: str | None = None
    loading_resolved: bool = False
    followup_ids: list[str] = field(default_factory=list)


@dataclass(eq=False)
class _Connection:
    ws: web.WebSocketResponse
    request: web.Request
    compressor: Any | None
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    session: _Session | None = None


@dataclass(eq=False)
class _Session:
    id: str
    intents: int
    seq: int = 0
    log: list[Json] = field(default_factory=list)  # every dispatch, for RESUME replays
    conn: _Connection | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: [shard_id, shard_count] from IDENTIFY, or None for an unsharded session.
    shard: list[int] | None = None

    def takes(self, data: Json) -> bool:
        """Return whether this session's shard gets an event: `(guild_id >> 22) % count`, DMs on shard 0."""
        if not self.shard:
            return True
        shard_id, count = self.shard
        guild_id = data.get("guild_id") if isinstance(data, dict) else None
        return (int(guild_id) >> 22) % count == shard_id if guild_id else shard_id == 0


class ApiError(Exception):
    """Raised by a handler to answer with Discord's error JSON."""

    def __init__(self, status: int, code: int, message: str, errors: Json | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status, self.code, self.message, self.errors = status, code, message, errors

    def response(self) -> web.Response:
        body: Json = {"message": self.message, "code": self.code}
        if self.errors:
            body["errors"] = self.errors
        return json_response(body, status=self.status)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response with ``Content-Type: application/json`` exactly (no charset)."""
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def _form_error(field_name: str, code: str, message: str) -> ApiError:
    return ApiError(400, 50035, "Invalid Form Body", {field_name: {"_errors": [{"code": code, "message": message}]}})


def _query_flag(request: web.Request, name: str) -> bool:
    """A boolean query parameter as Discord reads them (``true``, ``True`` or ``1``)."""
    return request.query.get(name, "").lower() in ("1", "true")


def _embed_chars(embed: Json) -> int:
    fields = embed.get("fields") or []
    parts = [embed.get("title"), embed.get("description"), (embed.get("footer") or {}).get("text"),
             (embed.get("author") or {}).get("name")]
    parts += [f.get("name") for f in fields] + [f.get("value") for f in fields]
    return sum(len(p) for p in parts if p)


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class FakeDiscordServer:
    """A Discord REST + gateway server on 127.0.0.1 for the real discord.py client.

    Use it as a context manager (``with FakeDiscordServer() as server:``) and point discord.py
    at it with :func:`point_discord_py_at`. It holds one guild (``guild_id``) with a text
    channel ``general`` (``channel_id``), a forum ``tasks`` (``forum_id``), the bot user
    (``bot_user``, whose id is also ``application_id``) and a human member ``human`` ("alice").
    """

    def __init__(
        self,
        *,
        token: str = "fake-bot-token",
        privileged_intents_allowed: bool = True,
        heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS,
        interaction_ack_timeout: float = INTERACTION_ACK_TIMEOUT_S,
    ) -> None:
        self.token = token
        self.privileged_intents_allowed = privileged_intents_allowed
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.interaction_ack_timeout = interaction_ack_timeout
        self.resume_allowed = True  # False: a RESUME gets INVALID_SESSION (op 9, d=false)

        self._cond = threading.Condition(threading.RLock())
        self._snowflake_lock = threading.Lock()
        self._last_snowflake = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

        # Records, read by tests (mutated only under self._cond).
        self.calls: list[Call] = []
        self.unhandled: list[Call] = []  # REST requests no route knows
        self.messages: defaultdict[str, list[FakeMessage]] = defaultdict(list)
        self.threads: dict[str, Json] = {}
        self.interaction_responses: list[InteractionResponse] = []
        self.commands: dict[str | None, list[Json]] = {}  # None: global commands, else guild id
        self.typing: list[str] = []
        self.gateway_connections: list[GatewayConnection] = []
        self.identify_payloads: list[Json] = []
        self.resume_payloads: list[Json] = []
        self.identifies = 0
        self.resumes = 0  # successful RESUMEs
        self.heartbeats = 0
        self.dispatched: list[tuple[str, Json]] = []  # (event, data) as pushed, before filtering

        self._messages_by_id: dict[str, FakeMessage] = {}
        self._attachments_by_id: dict[str, FakeAttachment] = {}
        self._interactions: dict[str, _Interaction] = {}  # by token
        self._sessions: dict[str, _Session] = {}
        self._rate_limits: list[_RateLimitRule] = []
        #: Channels where the bot lacks Read Message History: reading their messages is 403 Missing Access.
        self.history_hidden: set[str] = set()

        self.application_id = self.bot_id = self.snowflake()
        self.bot_user: Json = self._user_json(self.bot_id, "threadwork-bot", bot=True)
        self.human = self.add_user("alice")
        self.guild_id = self.snowflake()
        self.channels: dict[str, Json] = {}
        self.members: dict[str, Json] = {}
        self.channel_id = self._add_channel(CHANNEL_TEXT, "general")
        self.forum_id = self._add_channel(CHANNEL_FORUM, "tasks")
        for user in (self.bot_user, self.human):
            self.add_member(user)

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> FakeDiscordServer:
        """Start the loop thread and listen on a free port of 127.0.0.1."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-discord", daemon=True)
        self._thread.start()
        self._call(self._start_site())
        return self

    def stop(self) -> None:
        """Close every connection, stop the server and its thread."""
        if self._loop is None or self._thread is None:
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> FakeDiscordServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """The value for ``discord.http.Route.BASE``."""
        return f"{self.base_url}{API_PREFIX}"

    @property
    def gateway_url(self) -> str:
        """The value for ``DiscordWebSocket.DEFAULT_GATEWAY`` (as a ``yarl.URL``)."""
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def resume_gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/resume"

    @property
    def env(self) -> dict[str, str]:
        """Environment variables telling the product where Discord is."""
        return {"DISCORD_API_URL": self.api_url, "DISCORD_GATEWAY_URL": self.gateway_url}

    # ---- test-side helpers -------------------------------------------------------------

    def snowflake(self) -> str:
        """A new, increasing Discord id whose timestamp is now."""
        with self._snowflake_lock:
            value = max(((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) | (1 << 17), self._last_snowflake + 1)
            self._last_snowflake = value
            return str(value)

    def add_user(self, username: str, *, bot: bool = False) -> Json:
        """A new user object (not yet a guild member)."""
        return self._user_json(self.snowflake(), username, bot=bot)

    def add_member(self, user: Json) -> Json:
        """Make ``user`` a member of the test guild; returns the member object."""
        member = {"user": user, "roles": [], "joined_at": now_iso(), "deaf": False, "mute": False, "flags": 0,
                  "nick": None, "avatar": None, "pending": False, "premium_since": None}
        with self._changing():
            self.members[user["id"]] = member
        return member

    def wait_for(self, predicate: Callable[[], T], timeout: float = 5.0) -> T:
        """Block until ``predicate()`` (run under the server's lock) is truthy; return it.

        Raises ``TimeoutError`` after ``timeout`` seconds. Do not call it from the event loop
        the bot runs on (use :meth:`wait_for_async` there).
        """
        with self._cond:
            result = self._cond.wait_for(predicate, timeout)
        if not result:
            raise TimeoutError(f"condition not met within {timeout} s")
        return result

    async def wait_for_async(self, predicate: Callable[[], T], timeout: float = 5.0) -> T:
        """:meth:`wait_for` for tests running on an event loop."""
        return await asyncio.to_thread(self.wait_for, predicate, timeout)

    def messages_in(self, channel_id: int | str, *, include_deleted: bool = False) -> list[FakeMessage]:
        """A snapshot of the messages of a channel, oldest first."""
        with self._cond:
            return [m for m in self.messages.get(str(channel_id), []) if include_deleted or not m.deleted]

    def message(self, message_id: int | str) -> FakeMessage:
        with self._cond:
            return self._messages_by_id[str(message_id)]

    def calls_to(self, method: str, path_regex: str) -> list[Call]:
        """The recorded calls whose method matches and path matches ``path_regex`` (re.search)."""
        with self._cond:
            return [c for c in self.calls if c.method == method and re.search(path_regex, c.path)]

    def rate_limit(self, method: str, path_regex: str, times: int = 1, retry_after: float = 0.5,
                   *, is_global: bool = False) -> None:
        """Answer the next ``times`` matching requests with Discord's 429.

        ``path_regex`` is searched in the path after ``/api/v10``, e.g. ``r"/channels/\\d+/messages$"``.
        """
        rule = _RateLimitRule(method.upper(), re.compile(path_regex), times, retry_after, is_global,
                              secrets.token_hex(16))
        with self._changing():
            self._rate_limits.append(rule)

    def dispatch(self, event: str, data: Json) -> None:
        """Send a gateway DISPATCH to every session (buffered for sessions being resumed)."""
        self._call(self._broadcast(event, data))

    def send_message_create(
        self,
        channel_id: int | str,
        content: str,
        author: Json | None = None,
        *,
        mentions: list[Json] | None = None,
        guild_id: int | str | None = None,
        attachments: Sequence[tuple[str, bytes]] = (),
        message_reference: Json | None = None,
    ) -> FakeMessage:
        """A user posts a message: store it and dispatch MESSAGE_CREATE.

        ``author`` defaults to ``human``; ``mentions`` default to the ``<@id>`` found in content;
        ``guild_id`` defaults to the channel's guild.
        """
        return self._call(self._push_message(str(channel_id), content, author or self.human, mentions,
                                             guild_id, list(attachments), message_reference))

    def add_thread_message(self, channel_id: int | str, content: str, author: Json | None = None) -> FakeMessage:
        """Store a message said earlier, without a MESSAGE_CREATE (one the bot was not told about)."""
        return self._create_message(str(channel_id), author or self.human, {"content": content}, [])

    def send_reaction_add(self, channel_id: int | str, message_id: int | str, user: Json | None = None,
                          emoji: str = "✅") -> Json:
        """A user reacts to a message with a unicode emoji: store it and dispatch MESSAGE_REACTION_ADD.

        Reaches only sessions with the GUILD_MESSAGE_REACTIONS (or, in a DM, DIRECT_MESSAGE_REACTIONS) intent."""
        user = user or self.human
        channel = self.channels[str(channel_id)]
        message = self._find_message(str(channel_id), str(message_id))
        data: Json = {"user_id": user["id"], "channel_id": str(channel_id), "message_id": str(message_id),
                      "emoji": {"id": None, "name": emoji}, "type": 0, "burst": False,
                      "message_author_id": message.author["id"]}
        if channel.get("guild_id"):
            data["guild_id"] = channel["guild_id"]
            data["member"] = self.members.get(user["id"]) or self.add_member(user)
        self.dispatch("MESSAGE_REACTION_ADD", data)
        return data

    def send_again(self, message: FakeMessage, times: int = 1) -> None:
        """Dispatch a user's MESSAGE_CREATE again, as a gateway replaying events after a reconnect may."""
        data = self._message_json(message, event=True)
        for _ in range(times):
            self.dispatch("MESSAGE_CREATE", data)

    def send_interaction_create(
        self,
        *,
        command: str | None = None,
        options: list[Json] | None = None,
        custom_id: str | None = None,
        message_id: int | str | None = None,
        component_type: int = 2,
        values: list[str] | None = None,
        channel_id: int | str | None = None,
        user: Json | None = None,
    ) -> Json:
        """A user runs slash command ``command`` (type 2) or clicks component ``custom_id`` of
        message ``message_id`` (type 3). Returns the INTERACTION_CREATE payload (id, token)."""
        return self._call(self._push_interaction(command, options, custom_id, message_id, component_type,
                                                 values, channel_id, user))

    def create_dm_channel(self, user: Json) -> str:
        """The DM channel between the bot and ``user`` (created on first use)."""
        with self._changing():
            for channel in self.channels.values():
                if channel["type"] == CHANNEL_DM and channel["recipients"][0]["id"] == user["id"]:
                    return channel["id"]
            cid = self.snowflake()
            self.channels[cid] = {"id": cid, "type": CHANNEL_DM, "last_message_id": None, "flags": 0,
                                  "recipients": [user]}
            return cid

    def drop_connection(self, code: int | None = None) -> None:
        """Cut every gateway connection: abruptly (TCP abort) or with close ``code``.

        Sessions stay resumable: dispatches made meanwhile are replayed after RESUME.
        """
        self._call(self._drop(code))

    # ---- plumbing ----------------------------------------------------------------------

    def _call(self, coro: Awaitable[T], timeout: float = 10.0) -> T:
        if self._loop is None:
            raise RuntimeError("the server is not running")
        if threading.current_thread() is self._thread:
            raise RuntimeError("blocking call from the server's own loop")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    @contextmanager
    def _changing(self) -> Iterator[None]:
        with self._cond:
            yield
            self._cond.notify_all()

    async def _start_site(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_REQUEST_BYTES)
        self._add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def _shutdown(self) -> None:
        for session in list(self._sessions.values()):
            if session.conn is not None:
                await session.conn.ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()

    def _user_json(self, user_id: str, username: str, *, bot: bool = False) -> Json:
        user: Json = {"id": user_id, "username": username, "discriminator": "0", "global_name": None,
                      "avatar": None, "public_flags": 0, "flags": 0, "banner": None, "accent_color": None}
        if bot:
            user.update(bot=True, verified=True, mfa_enabled=False, locale="en-US", email=None)
        return user

    def _add_channel(self, ctype: int, name: str) -> str:
        cid = self.snowflake()
        self.channels[cid] = {"id": cid, "type": ctype, "guild_id": self.guild_id, "name": name,
                              "position": len(self.channels), "permission_overwrites": [], "parent_id": None,
                              "topic": None, "nsfw": False, "rate_limit_per_user": 0, "last_message_id": None,
                              "flags": 0}
        if ctype == CHANNEL_FORUM:
            self.channels[cid].update(available_tags=[], default_reaction_emoji=None, default_sort_order=None,
                                      default_forum_layout=0, default_thread_rate_limit_per_user=0)
        return cid

    def _guild_json(self, *, full: bool) -> Json:
        everyone = {"id": self.guild_id, "name": "@everyone", "permissions": ALL_PERMISSIONS, "position": 0,
                    "color": 0, "hoist": False, "managed": False, "mentionable": False, "flags": 0,
                    "icon": None, "unicode_emoji": None}
        guild: Json = {"id": self.guild_id, "name": "Threadwork Test", "icon": None, "splash": None,
                       "discovery_splash": None, "owner_id": self.human["id"], "afk_channel_id": None,
                       "afk_timeout": 300, "verification_level": 0, "default_message_notifications": 0,
                       "explicit_content_filter": 0, "roles": [everyone], "emojis": [], "stickers": [],
                       "features": [], "mfa_level": 0, "application_id": None, "system_channel_id": None,
                       "system_channel_flags": 0, "rules_channel_id": None, "vanity_url_code": None,
                       "description": None, "banner": None, "premium_tier": 0, "premium_subscription_count": 0,
                       "preferred_locale": "en-US", "public_updates_channel_id": None, "nsfw_level": 0,
                       "premium_progress_bar_enabled": False, "max_members": 500000}
        if full:
            with self._cond:
                guild.update(
                    joined_at=now_iso(), large=False, unavailable=False, member_count=len(self.members),
                    members=list(self.members.values()), voice_states=[], presences=[], stage_instances=[],
                    guild_scheduled_events=[], soundboard_sounds=[],
                    channels=[c for c in self.channels.values() if c.get("guild_id") and c["id"] not in self.threads],
                    threads=list(self.threads.values()),
                )
        return guild

    def _app_json(self) -> Json:
        flags = APP_FLAGS_PRIVILEGED_ALLOWED if self.privileged_intents_allowed else 0
        return {"id": self.application_id, "name": "Threadwork", "icon": None, "description": "",
                "summary": "", "type": None, "bot_public": True, "bot_require_code_grant": False,
                "verify_key": "0" * 64, "flags": flags, "owner": self.human, "team": None, "bot": self.bot_user,
                "hook": True, "redirect_uris": [], "interactions_endpoint_url": None,
                "approximate_guild_count": 1, "integration_types_config": {"0": {}}}

    def _channel(self, channel_id: str) -> Json:
        channel = self.channels.get(channel_id)
        if channel is None:
            raise ApiError(404, 10003, "Unknown Channel")
        return channel

    def _find_message(self, channel_id: str, message_id: str) -> FakeMessage:
        msg = self._messages_by_id.get(message_id)
        if msg is None or msg.deleted or msg.channel_id != channel_id:
            raise ApiError(404, 10008, "Unknown Message")
        return msg

    # ---- messages ----------------------------------------------------------------------

    def _message_json(self, msg: FakeMessage, *, event: bool = False) -> Json:
        data: Json = {
            "id": msg.id, "type": msg.type, "channel_id": msg.channel_id, "author": msg.author,
            "content": msg.content, "timestamp": msg.timestamp, "edited_timestamp": msg.edited_timestamp,
            "tts": False, "mention_everyone": False, "mentions": msg.mentions, "mention_roles": [],
            "attachments": [self._attachment_json(msg.channel_id, a) for a in msg.attachments],
            "embeds": msg.embeds, "components": msg.components, "pinned": False, "flags": msg.flags,
        }
        if msg.webhook_id:
            data.update(webhook_id=msg.webhook_id, application_id=self.application_id)
        if msg.interaction_metadata:
            data["interaction_metadata"] = msg.interaction_metadata
        if msg.message_reference:
            data["message_reference"] = msg.message_reference
            ref = self._messages_by_id.get(str(msg.message_reference.get("message_id")))
            data["referenced_message"] = self._message_json(ref) if ref and not ref.deleted else None
        if msg.thread_id and msg.thread_id in self.threads:
            data["thread"] = self.threads[msg.thread_id]
        if msg.reactions:
            data["reactions"] = [{"emoji": {"id": None, "name": e}, "count": 1, "me": True}
                                 for e in dict.fromkeys(msg.reactions)]
        guild_id = self.channels.get(msg.channel_id, {}).get("guild_id")
        if event and guild_id:
            data["guild_id"] = guild_id
            member = self.members.get(msg.author["id"])
            if member and not msg.webhook_id:
                data["member"] = {k: v for k, v in member.items() if k != "user"}
        return data

    def _attachment_json(self, channel_id: str, att: FakeAttachment) -> Json:
        url = f"{self.base_url}/attachments/{channel_id}/{att.id}/{att.filename}"
        return {"id": att.id, "filename": att.filename, "size": len(att.data), "url": url, "proxy_url": url,
                "content_type": att.content_type, "description": att.description}

    def _mentions_in(self, content: str) -> list[Json]:
        with self._cond:
            users = {u["user"]["id"]: u["user"] for u in self.members.values()}
        users[self.bot_id] = self.bot_user
        return [users[uid] for uid in dict.fromkeys(MENTION_RE.findall(content)) if uid in users]

    def _validate(self, payload: Json, uploads: list[_Upload], *, partial: bool) -> None:
        content = payload.get("content") or ""
        embeds = payload.get("embeds") or []
        if len(content) > MAX_CONTENT_CHARS:
            raise _form_error("content", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CONTENT_CHARS} or fewer in length.")
        if len(embeds) > MAX_EMBEDS:
            raise _form_error("embeds", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_EMBEDS} or fewer in length.")
        if sum(_embed_chars(e) for e in embeds) > MAX_EMBED_TOTAL_CHARS:
            raise _form_error("embeds", "MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000")
        if len(uploads) > MAX_FILES:
            raise _form_error("files", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_FILES} or fewer in length.")
        if any(len(u.data) > MAX_FILE_BYTES for u in uploads):
            raise ApiError(413, 40005, "Request entity too large")
        if not partial and not (content or embeds or uploads or payload.get("components")
                                or payload.get("sticker_ids") or payload.get("poll")):
            raise ApiError(400, 50006, "Cannot send an empty message")

    def _new_attachments(self, payload: Json, uploads: list[_Upload]) -> list[FakeAttachment]:
        described = {str(a.get("id")): a for a in payload.get("attachments") or []}
        result = []
        for up in uploads:
            meta = described.get(str(up.index), {})
            att = FakeAttachment(self.snowflake(), meta.get("filename") or up.filename, up.data,
                                 up.content_type, meta.get("description"))
            self._attachments_by_id[att.id] = att
            result.append(att)
        return result

    def _create_message(self, channel_id: str, author: Json, payload: Json, uploads: list[_Upload], *,
                        interaction: _Interaction | None = None, msg_id: str | None = None,
                        flags: int = 0) -> FakeMessage:
        """Validate, store and return a new message (the caller dispatches it)."""
        self._validate(payload, uploads, partial=(flags & MESSAGE_FLAG_LOADING) != 0)
        content = payload.get("content") or ""
        msg = FakeMessage(
            id=msg_id or self.snowflake(), channel_id=channel_id, author=author, content=content,
            embeds=list(payload.get("embeds") or []), components=list(payload.get("components") or []),
            mentions=self._mentions_in(content), flags=flags | (payload.get("flags") or 0),
            message_reference=payload.get("message_reference"), history=[content],
        )
        msg.attachments = self._new_attachments(payload, uploads)
        if msg.message_reference:
            msg.type = 19
        if interaction is not None:
            msg.webhook_id = self.application_id
            msg.type = 20 if interaction.type == 2 else 0
            msg.interaction_metadata = {
                "id": interaction.id, "type": interaction.type, "user": interaction.payload["member"]["user"],
                "authorizing_integration_owners": {"0": self.guild_id},
            }
        with self._changing():
            self.messages[channel_id].append(msg)
            self._messages_by_id[msg.id] = msg
            channel = self.channels.get(channel_id)
            if channel is not None:
                channel["last_message_id"] = msg.id
                if channel_id in self.threads:
                    channel["message_count"] += 1
                    channel["total_message_sent"] += 1
        return msg

    def _edit_message(self, msg: FakeMessage, payload: Json, uploads: list[_Upload]) -> None:
        self._validate(payload, uploads, partial=True)
        with self._changing():
            if "content" in payload:
                msg.content = payload["content"] or ""
                msg.mentions = self._mentions_in(msg.content)
            if "embeds" in payload:
                msg.embeds = list(payload["embeds"] or [])
            if "components" in payload:
                msg.components = list(payload["components"] or [])
            if "attachments" in payload:
                keep = {str(a["id"]) for a in payload["attachments"] or []}
                msg.attachments = [a for a in msg.attachments if a.id in keep]
            msg.attachments += self._new_attachments(payload, uploads)
            msg.flags &= ~MESSAGE_FLAG_LOADING
            msg.edited_timestamp = now_iso()
            msg.edits.append(payload)
            msg.history.append(msg.content)

    async def _announce(self, event: str, msg: FakeMessage) -> None:
        if not msg.ephemeral:
            await self._broadcast(event, self._message_json(msg, event=True))

    async def _push_message(self, channel_id: str, content: str, author: Json, mentions: list[Json] | None,
                            guild_id: int | str | None, files: list[tuple[str, bytes]],
                            reference: Json | None) -> FakeMessage:
        uploads = [_Upload(i, name, data, None) for i, (name, data) in enumerate(files)]
        payload: Json = {"content": content, "message_reference": reference}
        msg = self._create_message(channel_id, author, payload, uploads)
        if mentions is not None:
            msg.mentions = mentions
        data = self._message_json(msg, event=True)
        if guild_id is not None:
            data["guild_id"] = str(guild_id)
        await self._broadcast("MESSAGE_CREATE", data)
        return msg

    # ---- interactions ------------------------------------------------------------------

    async def _push_interaction(self, command: str | None, options: list[Json] | None, custom_id: str | None,
                                message_id: int | str | None, component_type: int, values: list[str] | None,
                                channel_id: int | str | None, user: Json | None) -> Json:
        user = user or self.human
        member = {**(self.members.get(user["id"]) or self.add_member(user)), "permissions": ALL_PERMISSIONS}
        payload: Json = {
            "id": self.snowflake(), "application_id": self.application_id, "token": secrets.token_urlsafe(48),
            "version": 1, "guild_id": self.guild_id, "guild": {"id": self.guild_id, "locale": "en-US", "features": []},
            "member": member, "app_permissions": ALL_PERMISSIONS, "locale": "en-US", "guild_locale": "en-US",
            "entitlements": [], "authorizing_integration_owners": {"0": self.guild_id}, "context": 0,
            "attachment_size_limit": MAX_FILE_BYTES,
        }
        if command is not None:
            known = [c for c in self.commands.get(self.guild_id, []) + self.commands.get(None, [])
                     if c["name"] == command]
            payload["type"] = 2
            payload["data"] = {"id": known[0]["id"] if known else self.snowflake(), "name": command, "type": 1,
                               "options": options or []}
            if known and known[0].get("guild_id"):
                payload["data"]["guild_id"] = self.guild_id
        elif custom_id is not None and message_id is not None:
            msg = self._messages_by_id[str(message_id)]
            channel_id = channel_id or msg.channel_id
            payload["type"] = 3
            payload["data"] = {"custom_id": custom_id, "component_type": component_type}
            if values is not None:
                payload["data"]["values"] = values
            payload["message"] = self._message_json(msg)
        else:
            raise ValueError("give command=... or custom_id=... with message_id=...")
        cid = str(channel_id or self.channel_id)
        payload["channel_id"] = cid
        payload["channel"] = self.channels[cid]
        inter = _Interaction(payload["id"], payload["token"], payload["type"], cid, payload)
        if payload["type"] == 3:
            inter.original_id = str(message_id)
        with self._changing():
            self._interactions[inter.token] = inter
        await self._broadcast("INTERACTION_CREATE", payload)
        return payload

    def _interaction_for_webhook(self, request: web.Request) -> _Interaction:
        inter = self._interactions.get(request.match_info["token"])
        if inter is None or request.match_info["app_id"] != self.application_id:
            raise ApiError(404, 10015, "Unknown Webhook")
        return inter

    def _interaction_message(self, inter: _Interaction, message_id: str) -> FakeMessage:
        mid = inter.original_id if message_id == "@original" else message_id
        if mid is None or (mid != inter.original_id and mid not in inter.followup_ids):
            raise ApiError(404, 10008, "Unknown Message")
        return self._messages_by_id[mid]

    # ---- REST routes -------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        api = [
            ("GET", "/users/@me", self._get_me),
            ("GET", "/users/{user_id}", self._get_user),
            ("POST", "/users/@me/channels", self._open_dm),
            ("GET", "/gateway", self._get_gateway),
            ("GET", "/gateway/bot", self._get_gateway_bot),
            ("GET", "/oauth2/applications/@me", self._get_application),
            ("GET", "/applications/@me", self._get_application),
            ("GET", "/guilds/{guild_id}", self._get_guild),
            ("GET", "/guilds/{guild_id}/channels", self._get_guild_channels),
            ("GET", "/guilds/{guild_id}/members/{user_id}", self._get_member),
            ("GET", "/channels/{channel_id}", self._get_channel),
            ("GET", "/channels/{channel_id}/messages", self._list_messages),
            ("POST", "/channels/{channel_id}/messages", self._post_message),
            ("GET", "/channels/{channel_id}/messages/{message_id}", self._get_message),
            ("PATCH", "/channels/{channel_id}/messages/{message_id}", self._patch_message),
            ("DELETE", "/channels/{channel_id}/messages/{message_id}", self._delete_message),
            ("PUT", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me", self._react),
            ("DELETE", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me", self._unreact),
            ("POST", "/channels/{channel_id}/messages/{message_id}/threads", self._thread_from_message),
            ("POST", "/channels/{channel_id}/threads", self._thread_in_channel),
            ("POST", "/channels/{channel_id}/typing", self._typing),
            ("GET", "/applications/{app_id}/commands", self._get_commands),
            ("PUT", "/applications/{app_id}/commands", self._put_commands),
            ("GET", "/applications/{app_id}/guilds/{guild_id}/commands", self._get_commands),
            ("PUT", "/applications/{app_id}/guilds/{guild_id}/commands", self._put_commands),
            ("POST", "/interactions/{interaction_id}/{token}/callback", self._interaction_callback),
            ("POST", "/webhooks/{app_id}/{token}", self._followup),
            ("GET", "/webhooks/{app_id}/{token}/messages/{message_id}", self._get_webhook_message),
            ("PATCH", "/webhooks/{app_id}/{token}/messages/{message_id}", self._patch_webhook_message),
            ("DELETE", "/webhooks/{app_id}/{token}/messages/{message_id}", self._delete_webhook_message),
        ]
        for method, path, handler in api:
            app.router.add_route(method, API_PREFIX + path, handler)
        app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", self._get_attachment)
        app.router.add_get("/", self._gateway)
        app.router.add_get("/resume", self._gateway)

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX + "/"):
            return await handler(request)
        path = request.path[len(API_PREFIX):]
        body = await self._read_body(request)
        request[_BODY_KEY] = body
        call = Call(request.method, path, dict(request.query), body.payload, [u.filename for u in body.uploads])
        response: web.StreamResponse
        try:
            if not self._authorized(request, path):
                raise ApiError(401, 0, "401: Unauthorized")
            rule = self._take_rate_limit(request.method, path)
            response = self._too_many_requests(rule) if rule else await handler(request)
        except ApiError as exc:
            response = exc.response()
        except web.HTTPNotFound:
            response = json_response({"message": "404: Not Found", "code": 0}, status=404)
            with self._changing():
                self.unhandled.append(call)
        except web.HTTPMethodNotAllowed:
            response = json_response({"message": "405: Method Not Allowed", "code": 0}, status=405)
            with self._changing():
                self.unhandled.append(call)
        call.status = response.status
        with self._changing():
            self.calls.append(call)
        return response

    @staticmethod
    async def _read_body(request: web.Request) -> _Body:
        if request.content_type == "multipart/form-data":
            body = _Body()
            reader = await request.multipart()
            async for part in reader:
                name = getattr(part, "name", None) or ""
                if name == "payload_json":
                    body.payload = json.loads(await part.text())  # type: ignore[union-attr]
                elif match := re.fullmatch(r"files\[(\d+)\]", name):
                    data = bytes(await part.read())  # type: ignore[union-attr]
                    body.uploads.append(_Upload(int(match[1]), part.filename or "", data,  # type: ignore[union-attr]
                                                part.headers.get("Content-Type")))
            return body
        if request.can_read_body:
            raw = await request.read()
            try:
                return _Body(json.loads(raw)) if raw else _Body()
            except ValueError:
                return _Body(raw.decode(errors="replace"))
        return _Body()

    def _authorized(self, request: web.Request, path: str) -> bool:
        if path == "/gateway" or path.startswith(("/interactions/", "/webhooks/")):
            return True
        return request.headers.get("Authorization") == f"Bot {self.token}"

    def _take_rate_limit(self, method: str, path: str) -> _RateLimitRule | None:
        with self._changing():
            for rule in self._rate_limits:
                if rule.remaining > 0 and rule.method == method and rule.pattern.search(path):
                    rule.remaining -= 1
                    return rule
        return None

    @staticmethod
    def _too_many_requests(rule: _RateLimitRule) -> web.Response:
        headers = {"Retry-After": str(math.ceil(rule.retry_after)), "Via": "1.1 google"}
        if rule.is_global:
            headers.update({"X-RateLimit-Global": "true", "X-RateLimit-Scope": "global"})
        else:
            headers.update({
                "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": f"{time.time() + rule.retry_after:.3f}",
                "X-RateLimit-Reset-After": f"{rule.retry_after:.3f}", "X-RateLimit-Bucket": rule.bucket,
                "X-RateLimit-Scope": "user",
            })
        body = {"message": "You are being rate limited.", "retry_after": rule.retry_after, "global": rule.is_global}
        return json_response(body, status=429, headers=headers)

    async def _get_me(self, request: web.Request) -> web.Response:
        return json_response(self.bot_user)

    async def _get_user(self, request: web.Request) -> web.Response:
        uid = request.match_info["user_id"]
        member = self.members.get(uid)
        if uid == self.bot_id:
            return json_response(self.bot_user)
        if member is None:
            raise ApiError(404, 10013, "Unknown User")
        return json_response(member["user"])

    async def _open_dm(self, request: web.Request) -> web.Response:
        uid = str(request[_BODY_KEY].payload["recipient_id"])
        member = self.members.get(uid)
        if member is None:
            raise ApiError(404, 10013, "Unknown User")
        return json_response(self.channels[self.create_dm_channel(member["user"])])

    async def _get_gateway(self, request: web.Request) -> web.Response:
        return json_response({"url": self.gateway_url.rstrip("/")})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        limit = {"total": 1000, "remaining": 999, "reset_after": 14_400_000, "max_concurrency": 1}
        return json_response({"url": self.gateway_url.rstrip("/"), "shards": 1, "session_start_limit": limit})

    async def _get_application(self, request: web.Request) -> web.Response:
        return json_response(self._app_json())

    async def _get_guild(self, request: web.Request) -> web.Response:
        if request.match_info["guild_id"] != self.guild_id:
            raise ApiError(404, 10004, "Unknown Guild")
        return json_response(self._guild_json(full=False))

    async def _get_guild_channels(self, request: web.Request) -> web.Response:
        if request.match_info["guild_id"] != self.guild_id:
            raise ApiError(404, 10004, "Unknown Guild")
        return json_response(self._guild_json(full=True)["channels"])

    async def _get_member(self, request: web.Request) -> web.Response:
        member = self.members.get(request.match_info["user_id"])
        if request.match_info["guild_id"] != self.guild_id or member is None:
            raise ApiError(404, 10007, "Unknown Member")
        return json_response(member)

    async def _get_channel(self, request: web.Request) -> web.Response:
        return json_response(self._channel(request.match_info["channel_id"]))

    async def _list_messages(self, request: web.Request) -> web.Response:
        cid = request.match_info["channel_id"]
        self._channel(cid)
        if cid in self.history_hidden:
            raise ApiError(403, 50001, "Missing Access")
        limit = min(int(request.query.get("limit", 50)), 100)
        before = int(request.query.get("before", 1 << 63))
        after = int(request.query.get("after", 0))
        found = [m for m in reversed(self.messages_in(cid)) if not m.ephemeral and after < int(m.id) < before]
        # Newest first either way; with only `after`, Discord returns the messages just after it
        # (discord.py's oldest-first paging takes the first one as the next `after`).
        page = found[-limit:] if "after" in request.query and "before" not in request.query else found[:limit]
        return json_response([self._message_json(m) for m in page])

    async def _post_message(self, request: web.Request) -> web.Response:
        cid = request.match_info["channel_id"]
        self._channel(cid)
        body: _Body = request[_BODY_KEY]
        msg = self._create_message(cid, self.bot_user, body.payload or {}, body.uploads)
        await self._announce("MESSAGE_CREATE", msg)
        return json_response(self._message_json(msg))

    async def _get_message(self, request: web.Request) -> web.Response:
        msg = self._find_message(request.match_info["channel_id"], request.match_info["message_id"])
        return json_response(self._message_json(msg))

    async def _patch_message(self, request: web.Request) -> web.Response:
        msg = self._find_message(request.match_info["channel_id"], request.match_info["message_id"])
        if msg.author["id"] != self.bot_id:
            raise ApiError(403, 50005, "Cannot edit a message authored by another user")
        body: _Body = request[_BODY_KEY]
        self._edit_message(msg, body.payload or {}, body.uploads)
        await self._announce("MESSAGE_UPDATE", msg)
        return json_response(self._message_json(msg))

    async def _delete_message(self, request: web.Request) -> web.Response:
        msg = self._find_message(request.match_info["channel_id"], request.match_info["message_id"])
        with self._changing():
            msg.deleted = True
        await self._broadcast("MESSAGE_DELETE", {"id": msg.id, "channel_id": msg.channel_id,
                                                 "guild_id": self.channels[msg.channel_id].get("guild_id")})
        return web.Response(status=204)

    async def _react(self, request: web.Request) -> web.Response:
        msg = self._find_message(request.match_info["channel_id"], request.match_info["message_id"])
        with self._changing():
            msg.reactions.append(request.match_info["emoji"])
        return web.Response(status=204)

    async def _unreact(self, request: web.Request) -> web.Response:
        msg = self._find_message(request.match_info["channel_id"], request.match_info["message_id"])
        with self._changing():
            msg.reactions = [e for e in msg.reactions if e != request.match_info["emoji"]]
        return web.Response(status=204)

    async def _typing(self, request: web.Request) -> web.Response:
        cid = request.match_info["channel_id"]
        self._channel(cid)
        with self._changing():
            self.typing.append(cid)
        return web.Response(status=204)

    def _new_thread(self, parent_id: str, payload: Json, thread_id: str | None = None) -> Json:
        parent = self._channel(parent_id)
        name = payload.get("name") or ""
        if not 1 <= len(name) <= 100:
            raise _form_error("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        if parent["type"] not in (CHANNEL_TEXT, CHANNEL_FORUM):
            raise ApiError(400, 50024, "Cannot execute action on this channel type")
        tid = thread_id or self.snowflake()
        created = now_iso()
        thread = {
            "id": tid, "type": payload.get("type", CHANNEL_PUBLIC_THREAD if thread_id else CHANNEL_PRIVATE_THREAD),
            "guild_id": self.guild_id, "parent_id": parent_id, "owner_id": self.bot_id, "name": name,
            "last_message_id": None, "rate_limit_per_user": payload.get("rate_limit_per_user") or 0,
            "message_count": 0, "member_count": 1, "total_message_sent": 0, "flags": 0, "applied_tags": [],
            "thread_metadata": {"archived": False, "auto_archive_duration": payload.get("auto_archive_duration", 4320),
                                "archive_timestamp": created, "locked": False, "create_timestamp": created},
            "member": {"id": tid, "user_id": self.bot_id, "join_timestamp": created, "flags": 1},
        }
        if parent["type"] == CHANNEL_FORUM:
            thread["type"] = CHANNEL_PUBLIC_THREAD
            thread["applied_tags"] = payload.get("applied_tags") or []
        with self._changing():
            self.threads[tid] = thread
            self.channels[tid] = thread
        return thread

    async def _thread_from_message(self, request: web.Request) -> web.Response:
        cid, mid = request.match_info["channel_id"], request.match_info["message_id"]
        msg = self._find_message(cid, mid)
        if msg.thread_id is not None:
            raise ApiError(400, 160004, "A thread has already been created for this message")
        payload = {**(request[_BODY_KEY].payload or {}), "type": CHANNEL_PUBLIC_THREAD}
        thread = self._new_thread(cid, payload, thread_id=mid)
        with self._changing():
            msg.thread_id = thread["id"]
        await self._broadcast("THREAD_CREATE", {**thread, "newly_created": True})
        return json_response(thread, status=201)

    async def _thread_in_channel(self, request: web.Request) -> web.Response:
        cid = request.match_info["channel_id"]
        body: _Body = request[_BODY_KEY]
        payload = body.payload or {}
        forum = self._channel(cid)["type"] == CHANNEL_FORUM
        if forum and "message" not in payload:
            raise _form_error("message", "BASE_TYPE_REQUIRED", "This field is required")
        thread = self._new_thread(cid, payload)
        await self._broadcast("THREAD_CREATE", {**thread, "newly_created": True})
        if not forum:
            return json_response(thread, status=201)
        starter = self._create_message(thread["id"], self.bot_user, payload["message"], body.uploads,
                                       msg_id=thread["id"])
        await self._announce("MESSAGE_CREATE", starter)
        return json_response({**thread, "message": self._message_json(starter)}, status=201)

    async def _get_commands(self, request: web.Request) -> web.Response:
        if request.match_info["app_id"] != self.application_id:
            raise ApiError(403, 50001, "Missing Access")
        return json_response(self.commands.get(request.match_info.get("guild_id"), []))

    async def _put_commands(self, request: web.Request) -> web.Response:
        if request.match_info["app_id"] != self.application_id:
            raise ApiError(403, 50001, "Missing Access")
        guild_id = request.match_info.get("guild_id")
        previous = {c["name"]: c["id"] for c in self.commands.get(guild_id, [])}
        stored = []
        for index, cmd in enumerate(request[_BODY_KEY].payload or []):
            name, ctype = cmd.get("name", ""), cmd.get("type", 1)
            if not 1 <= len(name) <= 32 or (ctype == 1 and name != name.lower()):
                raise _form_error(f"{index}.name", "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid")
            if ctype == 1 and not 1 <= len(cmd.get("description", "")) <= 100:
                raise _form_error(f"{index}.description", "BASE_TYPE_BAD_LENGTH",
                                  "Must be between 1 and 100 in length.")
            entry = {"options": [], "default_member_permissions": None, "nsfw": False, **cmd, "type": ctype,
                     "id": previous.get(name) or self.snowflake(), "application_id": self.application_id,
                     "version": self.snowflake()}
            if guild_id:
                entry["guild_id"] = guild_id
            stored.append(entry)
        with self._changing():
            self.commands[guild_id] = stored
        return json_response(stored)

    async def _interaction_callback(self, request: web.Request) -> web.Response:
        inter = self._interactions.get(request.match_info["token"])
        if inter is None or inter.id != request.match_info["interaction_id"] \
                or time.monotonic() - inter.created > self.interaction_ack_timeout:
            raise ApiError(404, 10062, "Unknown interaction")
        if inter.response_type is not None:
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        body: _Body = request[_BODY_KEY]
        rtype: int = (body.payload or {}).get("type", 0)
        data: Json = (body.payload or {}).get("data") or {}
        msg: FakeMessage | None = None
        if rtype == CALLBACK_MESSAGE:
            msg = self._create_message(inter.channel_id, self.bot_user, data, body.uploads, interaction=inter)
        elif rtype == CALLBACK_DEFERRED_MESSAGE:
            flags = MESSAGE_FLAG_LOADING | (data.get("flags", 0) & MESSAGE_FLAG_EPHEMERAL)
            msg = self._create_message(inter.channel_id, self.bot_user, {}, [], interaction=inter, flags=flags)
        elif rtype == CALLBACK_UPDATE_MESSAGE and inter.original_id:
            msg = self._messages_by_id[inter.original_id]
            self._edit_message(msg, data, body.uploads)
        elif rtype == CALLBACK_DEFERRED_UPDATE and inter.original_id:
            msg = self._messages_by_id[inter.original_id]
        elif rtype not in (CALLBACK_PONG, 8, 9, 10, 12):
            raise _form_error("type", "BASE_TYPE_CHOICES", f"Value must be one of the callback types ({rtype})")
        with self._changing():
            inter.response_type = rtype
            if msg is not None:
                inter.original_id = msg.id
            self.interaction_responses.append(InteractionResponse(inter.id, inter.token, rtype, data))
        if msg is not None and rtype in (CALLBACK_MESSAGE, CALLBACK_DEFERRED_MESSAGE):
            await self._announce("MESSAGE_CREATE", msg)
        elif msg is not None and rtype == CALLBACK_UPDATE_MESSAGE:
            await self._announce("MESSAGE_UPDATE", msg)
        if not _query_flag(request, "with_response"):
            return web.Response(status=204)
        result: Json = {"interaction": {"id": inter.id, "type": inter.type}}
        resource: Json = {"type": rtype}
        if msg is not None:
            result["interaction"].update(response_message_id=msg.id, response_message_loading=msg.loading,
                                         response_message_ephemeral=msg.ephemeral)
            resource["message"] = self._message_json(msg)
        result["resource"] = resource
        return json_response(result)

    async def _followup(self, request: web.Request) -> web.Response:
        inter = self._interaction_for_webhook(request)
        if inter.response_type is None:
            raise ApiError(404, 10015, "Unknown Webhook")
        body: _Body = request[_BODY_KEY]
        payload = body.payload or {}
        original = self._messages_by_id.get(inter.original_id or "")
        if original is not None and original.loading and not inter.loading_resolved:
            # The first followup after a "thinking" defer replaces the loading message.
            self._edit_message(original, payload, body.uploads)
            inter.loading_resolved = True
            await self._announce("MESSAGE_UPDATE", original)
            msg = original
        else:
            msg = self._create_message(inter.channel_id, self.bot_user, payload, body.uploads, interaction=inter)
            with self._changing():
                inter.followup_ids.append(msg.id)
            await self._announce("MESSAGE_CREATE", msg)
        if not _query_flag(request, "wait"):
            return web.Response(status=204)
        return json_response(self._message_json(msg))

    async def _get_webhook_message(self, request: web.Request) -> web.Response:
        inter = self._interaction_for_webhook(request)
        return json_response(self._message_json(self._interaction_message(inter, request.match_info["message_id"])))

    async def _patch_webhook_message(self, request: web.Request) -> web.Response:
        inter = self._interaction_for_webhook(request)
        msg = self._interaction_message(inter, request.match_info["message_id"])
        body: _Body = request[_BODY_KEY]
        self._edit_message(msg, body.payload or {}, body.uploads)
        if msg.id == inter.original_id:
            inter.loading_resolved = True
        await self._announce("MESSAGE_UPDATE", msg)
        return json_response(self._message_json(msg))

    async def _delete_webhook_message(self, request: web.Request) -> web.Response:
        inter = self._interaction_for_webhook(request)
        msg = self._interaction_message(inter, request.match_info["message_id"])
        with self._changing():
            msg.deleted = True
        return web.Response(status=204)

    async def _get_attachment(self, request: web.Request) -> web.Response:
        att = self._attachments_by_id.get(request.match_info["attachment_id"])
        if att is None:
            raise web.HTTPNotFound()
        return web.Response(body=att.data, content_type=att.content_type or "application/octet-stream")

    # ---- gateway -----------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="websocket expected")
        await ws.prepare(request)
        query = dict(request.query)
        compressor = zlib.compressobj() if query.get("compress") == "zlib-stream" else None
        conn = _Connection(ws, request, compressor)
        with self._changing():
            self.gateway_connections.append(GatewayConnection(request.path, query))
        if query.get("v") != "10":
            await ws.close(code=4012, message=b"Invalid API version.")
            return ws
        if query.get("encoding", "json") != "json":
            await ws.close(code=4002, message=b"Error while decoding payload.")
            return ws
        await self._send(conn, {"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms,
                                                "_trace": ["[\"fake-gateway\"]"]}, "s": None, "t": None})
        try:
            async for frame in ws:
                if frame.type is not WSMsgType.TEXT:
                    await ws.close(code=4002, message=b"Error while decoding payload.")
                    break
                await self._on_gateway_payload(conn, json.loads(frame.data))
        finally:
            session = conn.session
            if session is not None and session.conn is conn:
                session.conn = None
                if ws.close_code in (1000, 1001):  # a clean close by the client ends the session
                    self._sessions.pop(session.id, None)
        return ws

    async def _on_gateway_payload(self, conn: _Connection, payload: Json) -> None:
        op, data = payload.get("op"), payload.get("d")
        if op == 1:
            with self._changing():
                self.heartbeats += 1
            await self._send(conn, {"op": 11, "d": None, "s": None, "t": None})
        elif op == 2:
            await self._identify(conn, data or {})
        elif op == 6:
            await self._resume(conn, data or {})
        elif conn.session is None:
            await conn.ws.close(code=4003, message=b"Not authenticated.")
        elif op == 8:
            await self._request_members(conn.session, data or {})
        elif op not in (3, 4):  # presence and voice state updates are accepted and ignored
            await conn.ws.close(code=4001, message=b"Unknown opcode.")

    async def _identify(self, conn: _Connection, data: Json) -> None:
        if conn.session is not None:
            await conn.ws.close(code=4005, message=b"Already authenticated.")
            return
        if data.get("token") != self.token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        intents = data.get("intents")
        if not isinstance(intents, int):
            await conn.ws.close(code=4013, message=b"Invalid intent(s).")
            return
        if intents & PRIVILEGED_INTENTS and not self.privileged_intents_allowed:
            await conn.ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        session = _Session(secrets.token_hex(16), intents)
        with self._changing():
            self.identifies += 1
            self.identify_payloads.append({k: v for k, v in data.items() if k != "token"})
        ready = {"v": 10, "user": self.bot_user, "guilds": [{"id": self.guild_id, "unavailable": True}],
                 "session_id": session.id, "resume_gateway_url": self.resume_gateway_url,
                 "application": {"id": self.application_id, "flags": self._app_json()["flags"]},
                 "private_channels": [], "relationships": [], "presences": [], "guild_join_requests": [],
                 "geo_ordered_rtc_regions": [], "session_type": "normal", "auth": {}, "user_settings": {},
                 "_trace": ["[\"fake-gateway\"]"]}
        if "shard" in data:
            ready["shard"] = session.shard = list(data["shard"])
        owns_guild = session.takes({"guild_id": self.guild_id})
        if not owns_guild:
            ready["guilds"] = []
        async with session.lock:
            conn.session, session.conn = session, conn
            self._sessions[session.id] = session
            await self._emit_locked(session, "READY", ready)
            if owns_guild:
                await self._emit_locked(session, "GUILD_CREATE", self._guild_json(full=True))

    async def _resume(self, conn: _Connection, data: Json) -> None:
        with self._changing():
            self.resume_payloads.append({k: v for k, v in data.items() if k != "token"})
        if data.get("token") != self.token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        session = self._sessions.get(data.get("session_id") or "")
        if session is None or not self.resume_allowed:
            await self._send(conn, {"op": 9, "d": False, "s": None, "t": None})
            return
        async with session.lock:
            old, session.conn = session.conn, None
            if old is not None and old is not conn and old.request.transport is not None:
                old.request.transport.abort()
            seq = data.get("seq") or 0
            for payload in session.log:
                if payload["s"] > seq:
                    await self._send(conn, payload)
            conn.session, session.conn = session, conn
            with self._changing():
                self.resumes += 1
            await self._emit_locked(session, "RESUMED", {"_trace": ["[\"fake-gateway\"]"]})

    async def _request_members(self, session: _Session, data: Json) -> None:
        members = list(self.members.values())
        if data.get("user_ids"):
            wanted = {str(u) for u in data["user_ids"]}
            members = [m for m in members if m["user"]["id"] in wanted]
        elif data.get("query"):
            members = [m for m in members if m["user"]["username"].startswith(data["query"])]
        chunk = {"guild_id": self.guild_id, "members": members[: data.get("limit") or None],
                 "chunk_index": 0, "chunk_count": 1, "not_found": []}
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        async with session.lock:
            await self._emit_locked(session, "GUILD_MEMBERS_CHUNK", chunk)

    def _visible(self, session: _Session, event: str, data: Json) -> Json | None:
        """What ``session`` receives of an event, given its intents (None: nothing)."""
        if event == "MESSAGE_REACTION_ADD":
            wanted = INTENT_GUILD_MESSAGE_REACTIONS if "guild_id" in data else INTENT_DIRECT_MESSAGE_REACTIONS
            return data if session.intents & wanted else None
        if event not in ("MESSAGE_CREATE", "MESSAGE_UPDATE"):
            return data
        in_guild = "guild_id" in data
        if not session.intents & (INTENT_GUILD_MESSAGES if in_guild else INTENT_DIRECT_MESSAGES):
            return None
        own = data.get("author", {}).get("id") == self.bot_id
        mentioned = any(u.get("id") == self.bot_id for u in data.get("mentions", []))
        if not in_guild or own or mentioned or session.intents & INTENT_MESSAGE_CONTENT:
            return data
        return {**data, "content": "", "embeds": [], "attachments": [], "components": []}

    async def _emit_locked(self, session: _Session, event: str, data: Json) -> None:
        """Sequence, log and send one dispatch; the caller holds ``session.lock``."""
        visible = self._visible(session, event, data)
        if visible is None:
            return
        session.seq += 1
        payload = {"op": 0, "t": event, "s": session.seq, "d": visible}
        session.log.append(payload)
        if session.conn is not None:
            await self._send(session.conn, payload)

    async def _broadcast(self, event: str, data: Json) -> None:
        with self._changing():
            self.dispatched.append((event, data))
        for session in list(self._sessions.values()):
            if not session.takes(data):
                continue  # Discord sends a guild's events to the shard that owns the guild only
            async with session.lock:
                await self._emit_locked(session, event, data)

    async def _send(self, conn: _Connection, payload: Json) -> None:
        raw = json.dumps(payload, separators=(",", ":"))
        async with conn.send_lock:
            if conn.ws.closed:
                return
            try:
                if conn.compressor is not None:
                    compressed = conn.compressor.compress(raw.encode()) + conn.compressor.flush(zlib.Z_SYNC_FLUSH)
                    await conn.ws.send_bytes(compressed)
                else:
                    await conn.ws.send_str(raw)
            except (ConnectionError, RuntimeError):
                pass  # the peer is gone; the session log keeps the dispatch for a RESUME

    async def _drop(self, code: int | None) -> None:
        for session in list(self._sessions.values()):
            async with session.lock:
                conn, session.conn = session.conn, None
            if conn is None:
                continue
            if code is None:
                transport = conn.request.transport
                if transport is not None:
                    transport.abort()
            else:
                await conn.ws.close(code=code)


# --------------------------------------------------------------------------------------------
# Pointing discord.py at the server
# --------------------------------------------------------------------------------------------


class _HasUrls(Protocol):
    api_url: str
    gateway_url: str


def point_discord_py_at(server: _HasUrls) -> Callable[[], None]:
    """Point discord.py (2.x, checked on 2.7.1) at ``server``; return a function that undoes it.

    Two class attributes, both process-wide, must be set before the client connects:

    * ``discord.http.Route.BASE = "http://127.0.0.1:PORT/api/v10"`` (a ``str``, with the API
      version). ``Route.__init__`` reads it, so every REST call (HTTPClient, and the webhook
      adapter behind interaction responses and followups) goes there.
    * ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL("ws://127.0.0.1:PORT/")``
      (a ``yarl.URL``: ``from_client`` calls ``.with_query(v=10, encoding="json",
      compress="zlib-stream")`` on it). ``Client.connect`` passes no gateway on the first
      connection, so ``from_client`` uses this; it is also where the client goes again after
      INVALID_SESSION (``ws.gateway = self.DEFAULT_GATEWAY``) and where ``AutoShardedClient``
      goes when ``shard_count`` is given (without it, it asks ``GET /gateway/bot``).

    A RESUME needs nothing more: READY's ``resume_gateway_url`` becomes ``ws.gateway`` and
    ``Client.connect`` reconnects there, so the server must hand out its own address in READY
    (this one does: ``/resume``). ``discord.http._set_api_version`` would reset ``Route.BASE``
    to discord.com: do not call it after this.
    """
    import discord.gateway
    import discord.http
    import yarl

    old_base = discord.http.Route.BASE
    old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    discord.http.Route.BASE = server.api_url
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(server.gateway_url)

    def undo() -> None:
        discord.http.Route.BASE = old_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway

    return undo
