"""The Discord `ChatPort`: posts, edits and uploads through discord.py's REST client, from any thread.

The engine and the jobs are synchronous and run in many threads; discord.py is asyncio. The
port runs nothing itself: each call is a coroutine submitted to the loop of its client (the
gateway's loop in `serve`; a private one for a worker's REST-only port) with
`asyncio.run_coroutine_threadsafe`, and the calling thread waits for the result with a timeout.
Only the calling thread waits; the loop keeps serving the gateway and other calls.

Rate limits: discord.py waits out a 429 by itself (up to `MAX_RATELIMIT_WAIT_S`, beyond which
it raises). An edit of a partial reply (a status or an answer that will be edited again) must
not wait: it is sent once and a 429 comes back as `bot.errors.RateLimited`, so
`bot.progress.LiveMessage` coalesces the next edits instead of queueing them. Final edits,
posts and uploads wait, because they must land.

Long texts (`split_markdown`): a post becomes several messages and returns the first one's
id. An edit of that id edits the first message and edits, posts or deletes the follow-up
messages to match (the port remembers them); past `REPLY_ATTACH_THRESHOLD` characters the
first message holds the beginning and the whole text is attached as `answer.md`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import io
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any, TypeVar

import aiohttp
import discord
import discord.gateway
import discord.http
import yarl

from adapters.discord_format import (
    CONTENT_LIMIT,
    choice_view,
    split_markdown,
    status_embed,
    status_view,
    too_big_notice,
)
from bot import constants, metrics
from bot.config import Settings
from bot.engine import Engine
from bot.errors import HistoryRefused, RateLimited, UserFacingError
from bot.file_links import FileLinks
from bot.types import Attachment, Choice, Reply, ThreadMessage, ThreadRef

log = logging.getLogger(__name__)
T = TypeVar("T")

PLATFORM = "discord"
#: discord.py sleeps on a 429 up to this long and raises `discord.RateLimited` beyond it
#: (30 s is the smallest value discord.py accepts for `max_ratelimit_timeout`).
MAX_RATELIMIT_WAIT_S = 30.0
#: A port call gives up after this long: more than a waited-out rate limit plus the request.
CALL_TIMEOUT_S = 60.0
#: Uploads carry up to 25 MiB; give them longer.
UPLOAD_TIMEOUT_S = 180.0
#: Discord takes at most 25 MiB per request, whatever the guild's per-file limit (PLATFORM_FACTS).
REQUEST_BYTES_LIMIT = 25 * 1024 * 1024
#: How many long messages the port remembers the follow-up parts of (for later edits).
REMEMBERED_MESSAGES = 1_000
#: Posted for a reply with no text at all (Discord refuses an empty message).
EMPTY_TEXT = "…"
#: The file a reply longer than `REPLY_ATTACH_THRESHOLD` is attached as.
LONG_REPLY_FILENAME = "answer.md"
#: Discord's longest thread name (API docs: Start Thread without Message, `name` 1-100 characters).
THREAD_NAME_LIMIT = 100
#: Minutes of quiet before Discord archives a thread the bot opened (one of 60, 1440, 4320, 10080).
THREAD_ARCHIVE_MINUTES = 10080

#: Message types people write; joins, pins and "thread created" notices are not someone's words.
PEOPLES_MESSAGE_TYPES = (discord.MessageType.default, discord.MessageType.reply)
#: Bot messages ping nobody: a model's or agent's text must not notify @everyone or a user.
NO_MENTIONS = discord.AllowedMentions.none()

_NO_WAIT: contextvars.ContextVar[bool] = contextvars.ContextVar("threadwork_discord_no_wait", default=False)


class _TooManyRequests(Exception):
    """A 429 seen by a request that asked not to wait for it."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry after {retry_after:g}s")
        self.retry_after = retry_after


async def _on_request_end(session: aiohttp.ClientSession, context: Any, params: aiohttp.TraceRequestEndParams) -> None:
    # Runs inside discord.py's request, before its retry loop sees the 429: raising here ends
    # the request instead of sleeping through it.
    response = params.response
    if response.status == 429:
        metrics.rate_limited("discord", metrics.route_of(params.method, params.url.path))
    if response.status != 429 or not _NO_WAIT.get():
        return
    try:
        retry_after = float((await response.json(content_type=None))["retry_after"])
    except (ValueError, KeyError, TypeError, aiohttp.ClientError):
        retry_after = float(response.headers.get("Retry-After", "1"))
    raise _TooManyRequests(retry_after)


def client_options() -> dict[str, Any]:
    """Return the discord.Client options every Threadwork client uses (rate limits, mentions)."""
    # The bot never joins a voice channel: discord.py's warnings about voice libraries are noise.
    discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(_on_request_end)
    return {"max_ratelimit_timeout": MAX_RATELIMIT_WAIT_S, "http_trace": trace, "allowed_mentions": NO_MENTIONS}


def apply_url_overrides(settings: Settings) -> None:
    """Point discord.py at DISCORD_API_URL and DISCORD_GATEWAY_URL when they are set (process-wide).

    discord.py keeps both in class attributes: `Route.BASE` for REST (with the API version)
    and `DiscordWebSocket.DEFAULT_GATEWAY`, which a plain Client dials without asking.
    """
    api = settings.get("DISCORD_API_URL")
    if api:
        api = api.rstrip("/")
        if not re.search(r"/api/v\d+$", api):
            api += f"/api/v{discord.http.INTERNAL_API_VERSION}"
        discord.http.Route.BASE = api
    gateway = settings.get("DISCORD_GATEWAY_URL")
    if gateway:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)


class EventLoopThread:
    """An asyncio loop in its own daemon thread; other threads run coroutines on it and wait."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)

    def start(self) -> EventLoopThread:
        self._thread.start()
        return self

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule the coroutine on the loop; return its future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT_S) -> T:
        """Run the coroutine on the loop and return its result; raise TimeoutError after `timeout`."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a blocking Discord call from the client's own loop would deadlock it")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"Discord did not answer within {timeout:g}s") from None

    def stop(self) -> None:
        """Cancel what still runs on the loop, stop it and close it."""
        if not self._thread.is_alive():
            return

        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.call(cancel_rest(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class DiscordPort:
    """Posts, edits and uploads into Discord threads for the engine, from any thread."""

    platform = PLATFORM

    def __init__(self, client: discord.Client, loop: EventLoopThread, *, login_token: str | None = None) -> None:
        self._client = client
        self._loop = loop
        self.links = FileLinks()
        #: Set for a REST-only port: it logs in (no gateway) before its first call.
        self._login_token = login_token
        self._login_lock: asyncio.Lock | None = None
        # Touched only on the loop, so no lock: message id -> its follow-up messages / last content.
        self._follow_ups: OrderedDict[int, list[int]] = OrderedDict()
        self._contents: OrderedDict[int, str | None] = OrderedDict()

    # -- ChatPort ------------------------------------------------------------------------------

    def post(self, where: ThreadRef, reply: Reply) -> str:
        return self._call(self._post(where, reply))

    def edit(self, where: ThreadRef, message_id: str, reply: Reply) -> None:
        self._call(self._edit(where, int(message_id), reply))

    def post_choices(self, where: ThreadRef, reply: Reply, choices: list[Choice]) -> str:
        """Post the reply with a button per choice (message components); a click is an interaction."""
        return self._call(self._post_choices(where, reply, choices))

    async def _post_choices(self, where: ThreadRef, reply: Reply, choices: list[Choice]) -> str:
        text = split_markdown(reply.text, CONTENT_LIMIT)[0]
        sent = await self._channel(where).send(text, view=choice_view(choices))
        self._remember(sent.id, text, [])
        return str(sent.id)

    def upload(self, where: ThreadRef, attachment: Attachment) -> str:
        return self._call(self._upload(where, attachment), timeout=UPLOAD_TIMEOUT_S)

    def open_thread(self, where: ThreadRef, text: str) -> ThreadRef:
        """Start a public thread in the conversation's channel with `text` first in it; return the thread."""
        try:
            return self._call(self._open_thread(where, text))
        except discord.HTTPException as exc:  # a DM, or a channel the bot may not start threads in
            raise UserFacingError(f"Discord refused to start a thread here ({exc.text or exc.status}): "
                                  "use a server channel where I may create threads.") from None

    def upload_limit(self, where: ThreadRef) -> int:
        """Return the largest file Discord takes in one upload where the thread is."""
        return self._file_limit(where)[0]

    def thread_history(self, where: ThreadRef, *, before: str | None, limit: int) -> list[ThreadMessage]:
        """Return the thread's messages before `before` (a snowflake), oldest first: GET /channels/{id}/messages.

        Needs the Read Message History permission; without it Discord answers 403, which is
        `HistoryRefused`. A direct message, or a thread the bot opened on the message that
        brought it, has nothing before.
        """
        if where.thread in ("", where.channel) or before == where.thread:
            return []
        try:
            return self._call(self._history(where, before, limit))
        except (discord.Forbidden, discord.NotFound) as exc:
            raise HistoryRefused(f"Discord {exc.status}: {exc.text or 'no access'}") from None

    def close(self) -> None:
        """Close a REST-only port's client and loop (a gateway's port closes with its bot)."""
        if self._login_token is not None:
            self._loop.call(self._client.close())
            self._loop.stop()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT_S) -> T:
        try:
            return self._loop.call(self._logged_in(coro), timeout)
        except (_TooManyRequests, discord.RateLimited) as exc:
            raise RateLimited(exc.retry_after, "Discord rate limit") from None

    async def _logged_in(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._login_token is not None and self._client.user is None:
            self._login_lock = self._login_lock or asyncio.Lock()
            async with self._login_lock:
                if self._client.user is None:
                    await self._client.login(self._login_token)
        return await coro

    # -- on the loop ---------------------------------------------------------------------------

    async def _post(self, where: ThreadRef, reply: Reply) -> str:
        channel = self._channel(where)
        if reply.status is not None:
            view = status_view(reply.status)
            sent = await channel.send(embed=status_embed(reply.status), **({"view": view} if view else {}))
            self._remember(sent.id, None, [])
            return str(sent.id)
        parts, file = _layout(reply)
        head = await channel.send(parts[0], **({"file": file} if file else {}))
        follow_ups = [(await channel.send(part)).id for part in parts[1:]]
        self._remember(head.id, parts[0], follow_ups)
        for message_id, part in zip(follow_ups, parts[1:], strict=True):
            self._remember(message_id, part, [])
        return str(head.id)

    async def _history(self, where: ThreadRef, before: str | None, limit: int) -> list[ThreadMessage]:
        channel = self._channel(where)
        found = [message async for message in channel.history(
            limit=limit, before=discord.Object(int(before)) if before else None)]  # newest first, 100 a request
        found.reverse()
        if len(found) < limit:
            # A thread started from a message: that message (its id is the thread's) stays in the
            # parent channel, and it is often what the thread is about.
            parent = self._client.get_partial_messageable(int(where.channel))
            try:
                found.insert(0, await parent.fetch_message(int(where.thread)))
            except discord.HTTPException:  # a thread started without a message, or a starter we may not see
                pass
        return [self._thread_message(message) for message in found]

    def _thread_message(self, message: discord.Message) -> ThreadMessage:
        me = self._client.user
        return ThreadMessage(external_id=str(message.id), user_id=str(message.author.id),
                             text=re.sub(rf"<@!?{me.id}>\s*", "", message.content) if me else message.content,
                             sent_at=message.created_at, user_name=message.author.display_name,
                             is_bot=message.author.bot or message.type not in PEOPLES_MESSAGE_TYPES)

    async def _open_thread(self, where: ThreadRef, text: str) -> ThreadRef:
        first_line = text.strip().splitlines()[0] if text.strip() else EMPTY_TEXT
        data = await self._client.http.start_thread_without_message(
            int(where.channel), name=first_line[:THREAD_NAME_LIMIT], auto_archive_duration=THREAD_ARCHIVE_MINUTES,
            type=discord.ChannelType.public_thread.value)
        opened = ThreadRef(PLATFORM, where.channel, str(data["id"]))
        await self._post(opened, Reply(text))
        return opened

    async def _edit(self, where: ThreadRef, message_id: int, reply: Reply) -> None:
        _NO_WAIT.set(reply.partial)  # this task's requests only: a 429 raises instead of waiting
        channel = self._channel(where)
        if reply.status is not None:
            await channel.get_partial_message(message_id).edit(content=None, embed=status_embed(reply.status),
                                                               view=status_view(reply.status))
            self._remember(message_id, None, self._follow_ups.get(message_id, []))
            return
        parts, file = _layout(reply)
        if file is not None or self._contents.get(message_id, "") != parts[0]:
            extra = {"attachments": [file]} if file else {}
            await channel.get_partial_message(message_id).edit(content=parts[0], embeds=[], view=None, **extra)
            self._remember(message_id, parts[0], self._follow_ups.get(message_id, []))
        await self._match_follow_ups(channel, message_id, parts[1:])

    async def _match_follow_ups(self, channel: discord.PartialMessageable, head_id: int, parts: list[str]) -> None:
        """Edit, post or delete the messages after the first so they hold `parts`."""
        known = list(self._follow_ups.get(head_id, []))
        for index, part in enumerate(parts):
            if index < len(known):
                if self._contents.get(known[index]) != part:
                    await channel.get_partial_message(known[index]).edit(content=part)
                    self._remember(known[index], part, [])
            else:
                sent = await channel.send(part)
                known.append(sent.id)
                self._remember(sent.id, part, [])
            self._remember(head_id, self._contents.get(head_id), known)
        for surplus in known[len(parts):]:
            await channel.get_partial_message(surplus).delete()
            self._contents.pop(surplus, None)
        self._remember(head_id, self._contents.get(head_id), known[: len(parts)])

    async def _upload(self, where: ThreadRef, attachment: Attachment) -> str:
        channel = self._channel(where)
        limit, in_server = self._file_limit(where)
        size = len(attachment.data)
        if size > limit:
            notice = await channel.send(too_big_notice(attachment.filename, size, limit, in_server=in_server))
            return str(notice.id)
        file = discord.File(io.BytesIO(attachment.data), filename=attachment.filename,
                            description=attachment.title[:1024] or None)
        comment = attachment.comment[:CONTENT_LIMIT] or None
        sent = await channel.send(comment, file=file)
        if not sent.attachments:
            return str(sent.id)
        self.links.remember(str(sent.attachments[0].id), sent.attachments[0].url)
        return str(sent.attachments[0].id)

    def file_link(self, file_id: str) -> str | None:
        """Return the URL of a file this port uploaded lately."""
        return self.links.get(file_id)

    def _channel(self, where: ThreadRef) -> discord.PartialMessageable:
        return self._client.get_partial_messageable(int(where.thread))

    def _file_limit(self, where: ThreadRef) -> tuple[int, bool]:
        """Return the upload limit where the thread is, and whether it is in a server."""
        channel = self._client.get_channel(int(where.thread)) or self._client.get_channel(int(where.channel))
        guild = getattr(channel, "guild", None)
        if guild is not None:
            return min(guild.filesize_limit, REQUEST_BYTES_LIMIT), True
        # Not cached (a worker's REST-only port) or a DM: Discord's default. A thread's parent
        # channel differs from it; a DM's "thread" is the DM channel itself.
        return constants.DISCORD_DEFAULT_FILE_LIMIT, where.channel != where.thread

    def _remember(self, message_id: int, content: str | None, follow_ups: list[int]) -> None:
        for store, value in ((self._contents, content), (self._follow_ups, follow_ups)):
            store[message_id] = value  # type: ignore[index]
            store.move_to_end(message_id)
            while len(store) > REMEMBERED_MESSAGES:
                store.popitem(last=False)


def _layout(reply: Reply) -> tuple[list[str], discord.File | None]:
    """Return the messages a text reply takes, and the file that holds it whole if it is long."""
    text = reply.text if reply.text.strip() else EMPTY_TEXT
    if len(text) <= constants.REPLY_ATTACH_THRESHOLD:
        return split_markdown(text), None
    if reply.partial:
        note = "\n\n…"
        return [split_markdown(text, CONTENT_LIMIT - len(note))[0] + note], None
    note = f"\n\n*{len(text):,} characters in all: the whole answer is attached as {LONG_REPLY_FILENAME}.*"
    head = split_markdown(text, CONTENT_LIMIT - len(note))[0] + note
    return [head], discord.File(io.BytesIO(text.encode("utf-8")), filename=LONG_REPLY_FILENAME)


def rest_port(engine: Engine) -> DiscordPort | None:
    """Return a port that posts through Discord's REST API alone (a worker), or None without DISCORD_TOKEN."""
    token = engine.settings.get("DISCORD_TOKEN")
    if not token:
        return None
    apply_url_overrides(engine.settings)
    loop = EventLoopThread("discord-rest").start()
    # It never connects to the gateway; `guilds` only keeps discord.py from warning about state.
    client = discord.Client(intents=discord.Intents(guilds=True), **client_options())
    return DiscordPort(client, loop, login_token=token)
