"""The Discord adapter: the bot in Discord servers, threads and direct messages, on discord.py.

    gateway event, on discord.py's loop ─► Message ─► engine.dispatch in a dispatch thread
    engine and jobs, in any thread ─► DiscordPort ─► coroutine on the client's loop ─► REST

Where the bot answers:

- a message in a channel that mentions the bot opens a thread on that message, and the
  conversation continues in it (ThreadRef: the channel, the thread);
- in a thread the bot answers every message once the conversation exists there (it opened
  the thread, or was mentioned in it before), and any message that mentions it;
- in a direct message it answers everything (ThreadRef: the DM channel twice);
- `/agent task:`, `/ask question:` and `/threadwork command:` are deferred at once, echoed as
  the interaction's response, and dispatched like the typed `/agent ...`, `/ask ...` or chat
  command; in a channel, the echo opens the thread the answer goes to;
- the Cancel button of a run's status message dispatches `/cancel <run>` from whoever
  clicked it, in that thread.

A gateway event that a resumed connection (or Discord) delivers again is claimed once in
`processed_events`, so it opens no second thread and gets no second answer.

Elsewhere: the registry's descriptor is `adapters.discord_platform`; a worker's REST-only port
is `adapters.discord_port.rest_port`; the invite URL is `adapters.discord_manifest`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Callable, TypeVar

import aiohttp
import discord
import discord.http
from discord import app_commands

from adapters.discord_catch_up import missed_messages, start_after
from adapters.discord_format import CONTENT_LIMIT, CancelButton, ChoiceButton, thread_name
from adapters.discord_manifest import PRIVILEGED_INTENTS, gateway_intents
from adapters.discord_port import PLATFORM, DiscordPort, EventLoopThread, apply_url_overrides, client_options
from bot import constants
from bot.catch_up import SeenCursors
from bot.db.cursors import ChannelCursors
from bot.engine import SOMETHING_WENT_WRONG, Engine
from bot.errors import ConfigError
from bot.types import Message, Reaction, ThreadRef

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Threads the bot opens stay active for a day without messages (Discord's default choice).
THREAD_ARCHIVE_MINUTES = 1_440
#: Dispatch takes about 0.2 ms, but a command's reply is posted before it returns: a few
#: threads keep one slow post from holding up the next messages.
DISPATCH_THREADS = 8
#: How long `DiscordBot.start` waits for the gateway's READY.
READY_TIMEOUT_S = 60.0
#: Message types people write; joins, pins and "thread created" notices are not requests.
USER_MESSAGE_TYPES = (discord.MessageType.default, discord.MessageType.reply)

PRIVILEGED_INTENT_REFUSED = (
    "Discord refused the privileged intents in platforms.discord.intents: enable {names} under "
    "'Privileged Gateway Intents' on the Bot page of the application in the developer portal "
    "(https://discord.com/developers/applications), or remove them from manifest.yml"
)
TOKEN_REFUSED = ("Discord refused DISCORD_TOKEN (401 Unauthorized): copy the token again from the Bot "
                 "page of the developer portal (Reset Token) and export it")


# -- serving -------------------------------------------------------------------------


def serve(engine: Engine, *, stop: threading.Event | None = None) -> None:
    """Run the Discord bot until its connection ends for good (or `stop` is set).

    Applies the URL overrides, attaches the live port to the engine, syncs the application
    commands. A bad manifest section, a token or an intent that Discord refuses, or a Discord
    that cannot be reached is logged as one line saying what to do, and `serve` returns.
    """
    apply_url_overrides(engine.settings)
    try:
        bot = DiscordBot(engine)
    except ConfigError as exc:
        log.error("%s", exc)
        return
    engine.attach_port(bot.port)
    try:
        bot.start(ready_timeout=None)
        bot.wait(stop)
    except discord.PrivilegedIntentsRequired:
        names = [PRIVILEGED_INTENTS[n] for n in engine.manifest.platforms.discord.intents if n in PRIVILEGED_INTENTS]
        log.error(PRIVILEGED_INTENT_REFUSED.format(names=" and ".join(names) or "the privileged intents"))
    except discord.LoginFailure:
        log.error(TOKEN_REFUSED)
    except (aiohttp.ClientError, OSError) as exc:
        log.error("cannot reach Discord at %s: %s", discord.http.Route.BASE, exc)
    finally:
        bot.stop()


# -- the bot -------------------------------------------------------------------------------------


class _GatewayEvents:
    """What the bot's discord.py client does: hand every event it cares about to the `DiscordBot`."""

    def __init__(self, bot: DiscordBot, **options: Any) -> None:
        super().__init__(**options)
        self.bot = bot
        self.tree = app_commands.CommandTree(self)

    async def setup_hook(self) -> None:
        self.add_dynamic_items(CancelButton, ChoiceButton)
        self.bot.add_commands(self.tree)
        try:
            await self.tree.sync()
        except discord.HTTPException as exc:
            log.warning("could not register the slash commands (%s); was the bot invited with the "
                        "applications.commands scope?", exc)

    async def on_connect(self) -> None:
        self.bot.on_connect()

    async def on_ready(self) -> None:
        self.bot.on_ready()

    async def on_message(self, message: discord.Message) -> None:
        await self.bot.on_message(message)

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await self.bot.on_reaction(payload)

    async def cancel_clicked(self, interaction: discord.Interaction, run_id: int) -> None:
        await self.bot.on_cancel_click(interaction, run_id)

    async def choice_clicked(self, interaction: discord.Interaction, line: str) -> None:
        await self.bot.on_choice_click(interaction, line)


class GatewayClient(_GatewayEvents, discord.Client):
    """discord.py's client on one gateway connection (one process, every guild)."""


class ShardedGatewayClient(_GatewayEvents, discord.AutoShardedClient):
    """discord.py's client on the shards this process takes (`DISCORD_SHARD_IDS` of `DISCORD_SHARD_COUNT`)."""


def shard_options(settings: Any) -> dict[str, Any]:
    """Return the client's shard options from DISCORD_SHARD_COUNT and DISCORD_SHARD_IDS ({}: unsharded).

    Discord sends a guild's events to shard `(guild_id >> 22) % shard_count` only, so processes
    that split the shards between them each see their own guilds (direct messages: shard 0).
    """
    count, ids = settings.get("DISCORD_SHARD_COUNT"), settings.get("DISCORD_SHARD_IDS")
    if not count and not ids:
        return {}
    try:
        shard_count = int(count or "")
        shard_ids = [int(part) for part in (ids or "").replace(" ", "").split(",") if part] or list(range(shard_count))
    except ValueError:
        raise ConfigError("DISCORD_SHARD_COUNT must be a number and DISCORD_SHARD_IDS numbers separated by commas "
                          f"(got {count!r} and {ids!r})") from None
    if shard_count < 1 or not all(0 <= shard < shard_count for shard in shard_ids):
        raise ConfigError(f"DISCORD_SHARD_IDS {shard_ids} must each be below DISCORD_SHARD_COUNT ({shard_count})")
    return {"shard_count": shard_count, "shard_ids": shard_ids}


class DiscordBot:
    """The gateway side: discord.py's client on its own loop thread, feeding `engine.dispatch`."""

    def __init__(self, engine: Engine, *, token: str | None = None, **client_extra: Any) -> None:
        self.engine = engine
        self.token = token or engine.settings.get("DISCORD_TOKEN") or ""
        self.loop = EventLoopThread("discord-gateway")
        intents = gateway_intents(engine.manifest.platforms.discord)
        shards = shard_options(engine.settings)
        client_class = ShardedGatewayClient if shards else GatewayClient
        self.client = client_class(self, intents=intents, **shards, **client_options(), **client_extra)
        self.port = DiscordPort(self.client, self.loop)
        self._executor = ThreadPoolExecutor(DISPATCH_THREADS, thread_name_prefix="discord-dispatch")
        self._running: Future[None] | None = None
        self._closing = False
        #: The newest message seen per channel (a thread's count for its channel): `catch_up` reads what came since.
        self.cursors = SeenCursors(engine.db, PLATFORM)
        self._catch_up_task: asyncio.Task[None] | None = None
        #: Where the next catch-up starts: each channel's last seen message when the session began.
        self._catch_up_from: dict[str, str] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, ready_timeout: float | None = READY_TIMEOUT_S) -> DiscordBot:
        """Connect and return once the gateway is ready (with no timeout: at once); raise what stopped it."""
        self.cursors.load()
        self._catch_up_from = self.cursors.snapshot()  # before the first MESSAGE_CREATE is noted
        self.loop.start()
        self._running = self.loop.submit(self._run_client())
        if ready_timeout is None:
            return self
        deadline = time.monotonic() + ready_timeout
        while not self.client.is_ready():
            if self._running.done():
                self._running.result()  # raises LoginFailure, PrivilegedIntentsRequired...
                raise ConnectionError("the Discord client stopped before it was ready")
            if time.monotonic() > deadline:
                raise TimeoutError(f"Discord's gateway was not ready within {ready_timeout:g}s")
            time.sleep(0.01)
        return self

    def wait(self, stop: threading.Event | None = None) -> None:
        """Block until the client stops for good (or `stop` is set)."""
        assert self._running is not None
        while stop is not None and not self._running.done():
            if stop.wait(0.2):
                return
        self._running.result()

    def stop(self) -> None:
        """Take no more messages, let those being dispatched post their replies, then disconnect."""
        self._closing = True
        self._executor.shutdown(wait=True)
        if self._running is not None and not self.client.is_closed():
            self.loop.call(self.client.close(), timeout=10)
        self.loop.stop()
        self.cursors.close()

    def __enter__(self) -> DiscordBot:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _run_client(self) -> None:
        try:
            await self.client.start(self.token)
        finally:
            if not self.client.is_closed():  # start() leaves its HTTP session open when it fails
                await self.client.close()

    # -- messages ----------------------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        """Answer a person's message where the bot takes part; ignore everything else."""
        self.cursors.saw(self._cursor_channel(message.channel), str(message.id))  # answered or not, it was seen
        await self._answer(message)

    async def _answer(self, message: discord.Message) -> bool:
        """Act on the message as live; return whether it was dispatched (False: ignored, or answered before)."""
        try:
            return await self._on_message(message)
        except Exception:  # boundary: one incoming message
            log.exception("handling Discord message %s failed", message.id)
            return False

    async def _on_message(self, message: discord.Message) -> bool:
        me = self.client.user
        if self._closing or me is None or message.author.bot or message.author.id == me.id:
            return False
        if message.type not in USER_MESSAGE_TYPES:
            return False
        mentioned = self._mentions_me(message)
        text = self._clean_text(message)
        if not text:
            return False  # nothing to act on (or the message content intent is off)
        channel = message.channel
        direct = message.guild is None
        where: ThreadRef | None
        if direct:
            where = ThreadRef(PLATFORM, str(channel.id), str(channel.id))
        elif isinstance(channel, discord.Thread):
            where = ThreadRef(PLATFORM, str(channel.parent_id), str(channel.id))
        elif mentioned:
            where = None  # a thread is opened on the message once it is claimed
        else:
            return False
        must_know = where is not None and not direct and not mentioned
        if not await self._in_thread_pool(self._admit, where, str(message.id), must_know):
            return False
        if where is None:
            where = await self._open_thread(message, text)
        author = message.author
        await self._dispatch(Message(where=where, text=text, user_id=str(author.id), user_name=author.display_name,
                                     external_id=str(message.id), is_direct=direct, received_at=message.created_at))
        return True

    @staticmethod
    def _cursor_channel(channel: Any) -> str:
        """Return the channel a message counts for: a thread's parent, else the channel (a DM's included)."""
        parent = getattr(channel, "parent_id", None) if isinstance(channel, discord.Thread) else None
        return str(parent or channel.id)

    # -- catch-up after downtime ------------------------------------------------------------------

    def on_connect(self) -> None:
        """Note where a new session's catch-up starts: READY was parsed, none of its messages yet."""
        if self._catch_up_from is None:
            self._catch_up_from = self.cursors.snapshot()

    def on_ready(self) -> None:
        """Catch up in a task on the loop (every new session; a RESUMED one has Discord replay instead)."""
        if self._catch_up_task is None or self._catch_up_task.done():
            self._catch_up_task = asyncio.get_running_loop().create_task(self._catch_up_while_wanted())

    async def _catch_up_while_wanted(self) -> None:
        while self._catch_up_from is not None and not self._closing:
            since, self._catch_up_from = self._catch_up_from, None
            try:
                await self.catch_up(since)
            except Exception:  # boundary: one catch-up; the next READY tries again
                log.exception("discord: catching up on missed messages failed")

    async def catch_up(self, since: dict[str, str]) -> int:
        """Answer what was addressed to the bot after `since` (channel -> last seen id) as live; return how many.

        Per channel: its messages and its active threads' since then (at most
        `CATCH_UP_MAX_AGE_S` back, `CATCH_UP_MAX_MESSAGES` each), each handled as a live
        MESSAGE_CREATE is; a message answered before is refused by its claimed id.
        """
        now = time.time()
        answered = 0
        for channel_id, cursor in sorted(since.items()):
            if self._closing:
                break
            after = start_after(cursor, now)
            threads = await self._in_thread_pool(self._active_threads, channel_id, now)
            try:
                missed = await missed_messages(self.client, channel_id, after=after, threads=threads)
            except discord.HTTPException as exc:
                log.warning("discord: cannot read what channel %s said while I was away (%s %s); its missed "
                            "messages stay unanswered (the bot needs Read Message History)", channel_id,
                            exc.status, exc.text)
                continue
            if missed.elsewhere:
                log.debug("discord: channel %s is another shard's; its process catches up there", channel_id)
                continue
            count = 0
            for message in missed.messages:
                if self._closing:
                    break
                self.cursors.saw(channel_id, str(message.id))
                count += await self._answer(message)
            # Every channel at DEBUG, the ones with something to say at INFO: a new session is routine.
            log.log(logging.INFO if count or missed.cut_off else logging.DEBUG,
                    "discord: channel %s had %d missed message(s) for me (%d read since %s%s)", channel_id, count,
                    len(missed.messages), after, "; more were left unread" if missed.cut_off else "")
            answered += count
        if since:
            log.info("discord: caught up on %d channel(s): %d missed message(s) answered", len(since), answered)
        return answered

    def _active_threads(self, channel_id: str, now: float) -> list[tuple[str, str | None]]:
        since = datetime.fromtimestamp(now - constants.CATCH_UP_MAX_AGE_S, timezone.utc)
        with self.engine.db.reading() as session:
            return ChannelCursors(session).active_threads(PLATFORM, channel_id, since, constants.CATCH_UP_MAX_THREADS)

    async def on_reaction(self, payload: discord.RawReactionActionEvent) -> None:
        """Hand a person's reaction to a message (a ✅ on a proposed memory) to the plugins."""
        me = self.client.user
        if self._closing or me is None or payload.user_id == me.id:
            return
        if payload.message_author_id not in (None, me.id):
            return  # a reaction to someone else's message: every one in the bot's channels comes by
        member = payload.member
        if member is not None and member.bot:
            return
        reaction = Reaction(PLATFORM, str(payload.channel_id), str(payload.message_id), str(payload.user_id),
                            str(payload.emoji), user_name=member.display_name if member is not None else "")
        try:
            await self._in_thread_pool(self._react_now, reaction)
        except Exception:  # boundary: one incoming reaction
            log.exception("handling a Discord reaction on %s failed", payload.message_id)

    def _react_now(self, reaction: Reaction) -> None:
        key = f"reaction:{reaction.message_id}:{reaction.user_id}:{reaction.emoji}"
        if self.engine.claim_event(PLATFORM, key):  # a resumed gateway may deliver it again
            self.engine.hook.reaction_added(reaction=reaction, engine=self.engine)

    def _mentions_me(self, message: discord.Message) -> bool:
        me = self.client.user
        assert me is not None
        return me.id in message.raw_mentions or any(
            role.tags is not None and role.tags.bot_id == me.id for role in message.role_mentions)

    def _clean_text(self, message: discord.Message) -> str:
        """Return the message's text without the bot's mention, other mentions as @names, files as links."""
        me = self.client.user
        assert me is not None
        text = re.sub(rf"<@!?{me.id}>\s*", "", message.content)
        for role in message.role_mentions:
            if role.tags is not None and role.tags.bot_id == me.id:
                text = text.replace(f"<@&{role.id}>", "")
        for user in message.mentions:
            text = re.sub(rf"<@!?{user.id}>", f"@{user.display_name}", text)
        for attachment in message.attachments:
            text += f"\n[attached: {attachment.filename}]({attachment.url})"
        return text.strip()

    def _admit(self, where: ThreadRef | None, message_id: str, must_know: bool) -> bool:
        """Return whether to act on the message: its thread is known if need be, and it is new."""
        if must_know:
            assert where is not None
            if not self.engine.takes_part_in(where):
                return False
        return self.engine.claim_event(PLATFORM, message_id)

    async def _open_thread(self, message: discord.Message, text: str) -> ThreadRef:
        """Open a thread on the message; where that is refused, answer in the channel itself."""
        channel_id = str(message.channel.id)
        try:
            thread = await message.create_thread(name=thread_name(self.engine.redact(text)),
                                                 auto_archive_duration=THREAD_ARCHIVE_MINUTES)
        except discord.HTTPException as exc:
            log.warning("cannot open a thread in channel %s (%s); answering in the channel", channel_id, exc)
            return ThreadRef(PLATFORM, channel_id, channel_id)
        return ThreadRef(PLATFORM, channel_id, str(thread.id))

    async def _dispatch(self, message: Message) -> None:
        if not self._closing:
            await self._in_thread_pool(self._dispatch_now, message)

    def _dispatch_now(self, message: Message) -> None:
        self.engine.receive(message)

    async def _in_thread_pool(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(function, *args))

    # -- application commands and buttons -------------------------------------------------------

    def add_commands(self, tree: app_commands.CommandTree) -> None:
        """Register /agent, /ask and /threadwork on the client's command tree."""

        @tree.command(name="agent", description="Send the coding agent to work on a task")
        @app_commands.describe(task="What the agent should do")
        async def agent(interaction: discord.Interaction, task: str) -> None:
            await self.on_app_command(interaction, f"/agent {task}", title=task)

        @tree.command(name="ask", description="Ask a question, answered in chat (never starts the agent)")
        @app_commands.describe(question="Your question")
        async def ask(interaction: discord.Interaction, question: str) -> None:
            await self.on_app_command(interaction, f"/ask {question}", title=question)

        @tree.command(name="threadwork", description="Run one of the bot's chat commands (help, history, runs...)")
        @app_commands.describe(command="The command and its arguments, e.g. help or history 5")
        async def threadwork(interaction: discord.Interaction, command: str) -> None:
            command = command.strip()
            await self.on_app_command(interaction, command if command[:1] in "/!" else f"/{command}")

    async def on_app_command(self, interaction: discord.Interaction, text: str, *, title: str | None = None) -> None:
        """Defer at once, echo the request as the response, then dispatch it in its thread."""
        await interaction.response.defer(thinking=True)
        try:
            user = interaction.user
            echo = self.engine.redact(f"**{user.display_name}**: {text}")[:CONTENT_LIMIT]
            original = await interaction.edit_original_response(content=echo)
            channel = interaction.channel
            direct = interaction.guild is None
            if direct or channel is None:
                channel_id = str(interaction.channel_id)
                where = ThreadRef(PLATFORM, channel_id, channel_id)
            elif isinstance(channel, discord.Thread):
                where = ThreadRef(PLATFORM, str(channel.parent_id), str(channel.id))
            else:
                where = await self._open_thread(original, title or text)
            await self._dispatch(Message(where=where, text=text, user_id=str(user.id), user_name=user.display_name,
                                         external_id=str(interaction.id), is_direct=direct))
        except Exception:  # boundary: one interaction; "thinking…" must not stay forever
            log.exception("handling Discord command %r failed", text)
            await interaction.edit_original_response(content=SOMETHING_WENT_WRONG)

    async def on_cancel_click(self, interaction: discord.Interaction, run_id: int) -> None:
        """Acknowledge the click at once, then dispatch `/cancel <run>` from the clicker."""
        await self.on_choice_click(interaction, f"/cancel {run_id}")

    async def on_choice_click(self, interaction: discord.Interaction, line: str) -> None:
        """Acknowledge a button's click at once, then dispatch the line it stands for from the clicker."""
        await interaction.response.defer()  # a component's defer: no visible change, no "thinking"
        channel = interaction.channel
        channel_id = str(interaction.channel_id)
        parent = getattr(channel, "parent_id", None)
        where = ThreadRef(PLATFORM, str(parent) if parent else channel_id, channel_id)
        user = interaction.user
        await self._dispatch(Message(where=where, text=line, user_id=str(user.id),
                                     user_name=user.display_name, external_id=str(interaction.id),
                                     is_direct=interaction.guild is None))
