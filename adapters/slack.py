"""The Slack adapter: mentions, direct messages and thread replies in; posts, edits and files out.

    Slack ─► Socket Mode (default) or HTTP (signed requests) ─► Bolt App ─► ack (at once)
        ─► Bolt's listener thread: filter ─► claim the event id (durably) ─► engine.dispatch
    engine / workers ─► SlackPort: chat.postMessage, chat.update, files_upload_v2 (Web API only)

Bolt acknowledges Events API envelopes before a listener runs (`process_before_response` is
off), and the slash-command and button listeners call `ack()` first, so the 3-second budget
never waits on the database or the Web API. Slack re-delivers an event it thinks was lost, so
each event id is claimed in `processed_events` before it is dispatched: a re-delivery does
nothing. A worker anywhere needs only `SLACK_BOT_TOKEN` to post and edit
(`adapters.slack_port.web_api_port`); the registry knows Slack from `adapters.slack_platform`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from slack_bolt import App
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from adapters.slack_catch_up import missed_messages, start_after
from adapters.slack_format import (
    CANCEL_ACTION_ID,
    CHOICE_ACTION_PREFIX,
    LIVE_VIEW_ACTION_ID,
    escape,
    fit,
    from_slack,
)
from adapters.slack_manifest import EVENTS_PATH
from adapters.slack_port import (
    PLATFORM,
    SPOKEN_SUBTYPES,
    SlackPort,
    api_url,
    error_code,
    rate_limits,
    web_client,
)
from bot import constants, platforms
from bot.catch_up import SeenCursors
from bot.db.cursors import ChannelCursors
from bot.engine import UNREADABLE, Engine
from bot.errors import ConfigError, RateLimited
from bot.types import Message, Reaction, Reply, ThreadRef

__all__ = ["PLATFORM", "SlackAdapter", "SlackPort", "build_adapter", "serve"]

log = logging.getLogger(__name__)

#: Where HTTP mode answers load balancers and uptime checks.
HEALTH_PATH = "/healthz"
#: Threads running listeners after the ack (Bolt's default pool has 5); each is brief.
LISTENER_THREADS = 10
#: A slash command's thread starter is posted by the adapter itself: it waits out 429s this long.
THREAD_STARTER_DEADLINE_S = 10.0
#: The slash commands the app registers (manifest.yml lists the same): `/agent` and `/ask` become
#: the same chat line; `/threadwork` passes a chat command or a request on.
SLASH_COMMANDS = ("/agent", "/ask", "/threadwork")
#: Display names are looked up once per user (users.info) and kept this many at most.
USER_NAME_CACHE = 2_000


class SlackAdapter:
    """Slack's events, slash commands and button clicks, turned into the engine's messages."""

    def __init__(self, engine: Engine, client: WebClient, *, app_token: str | None = None,
                 signing_secret: str | None = None) -> None:
        self.engine = engine
        self.client = client
        self.port = SlackPort(client)
        self.app_token = app_token
        http = signing_secret is not None
        self.app = App(
            client=client,
            signing_secret=signing_secret or "",
            request_verification_enabled=http,
            process_before_response=False,
            listener_executor=ThreadPoolExecutor(LISTENER_THREADS, thread_name_prefix="slack-listener"),
            logger=logging.getLogger(f"{__name__}.bolt"),
        )
        self.app.event("app_mention")(self._on_event)
        self.app.event("message")(self._on_event)
        self.app.event("reaction_added")(self._on_reaction)
        for command in SLASH_COMMANDS:
            self.app.command(command)(self._on_command)
        self.app.action(CANCEL_ACTION_ID)(self._on_cancel)
        self.app.action(re.compile(f"^{CHOICE_ACTION_PREFIX}"))(self._on_choice)
        self.app.action(LIVE_VIEW_ACTION_ID)(lambda ack: ack())  # a link button: the browser does the work
        self.handler: SocketModeHandler | None = None
        self.http_server: WSGIServer | None = None
        self._names: dict[str, str] = {}
        self._names_lock = threading.Lock()
        #: The newest message seen per channel: after downtime, `catch_up` reads what came since.
        self.cursors = SeenCursors(engine.db, PLATFORM)
        self._catch_up_lock = threading.Lock()
        self._catch_up_thread: threading.Thread | None = None
        #: Where the next catch-up starts: each channel's last seen message when the connection opened.
        self._catch_up_from: dict[str, str] | None = None
        self._closing = False

    # -- connections --------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the Socket Mode connection (SLACK_APP_TOKEN); events flow until `close`."""
        if not self.app_token:
            raise ConfigError("Socket Mode needs SLACK_APP_TOKEN (an app-level xapp- token with connections:write)")
        self._closing = False
        self.cursors.load()
        self._catch_up_from = self.cursors.snapshot()  # before this connection's first event is noted
        self.handler = SocketModeHandler(self.app, app_token=self.app_token)
        # Every connection, the first and each reconnect, opens with a hello: catch up then.
        self.handler.client.message_listeners.append(self._on_socket_message)
        self.handler.connect()

    def listen(self, host: str, port: int) -> int:
        """Serve HTTP mode (signed requests at /slack/events, health at /healthz); return the port."""
        bolt = SlackRequestHandler(self.app, path=EVENTS_PATH)

        def application(environ: dict[str, Any], start_response: Any) -> Any:
            if environ.get("PATH_INFO") == HEALTH_PATH:
                return self._health(start_response)
            return bolt(environ, start_response)

        self.http_server = make_server(host, port, application, server_class=_ThreadingWSGIServer,
                                       handler_class=_QuietHandler)
        self._closing = False
        self.cursors.load()
        self.catch_up_in_background(self.cursors.snapshot())  # before the first request is served
        threading.Thread(target=self.http_server.serve_forever, name="slack-http", daemon=True).start()
        return self.http_server.server_port

    def close(self) -> None:
        """Close the Socket Mode connection or the HTTP server; stop catching up; write the cursors."""
        self._closing = True
        if self.handler is not None:
            self.handler.close()
            self.handler = None
        if self.http_server is not None:
            self.http_server.shutdown()
            self.http_server.server_close()
            self.http_server = None
        catching_up = self._catch_up_thread
        if catching_up is not None:
            catching_up.join(timeout=10)
        self.cursors.close()

    def _health(self, start_response: Any) -> list[bytes]:
        if self.engine.healthy():
            status, body = "200 OK", {"ok": True}
        else:
            status, body = "503 Service Unavailable", {"ok": False, "error": "database unavailable"}
        start_response(status, [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    # -- listeners (each runs after Slack has its ack) ---------------------------------------------

    def _on_event(self, body: dict[str, Any], event: dict[str, Any], context: Any) -> None:
        if isinstance(event, dict):
            self.cursors.saw(event.get("channel"), event.get("ts"))  # answered or not, it was seen
        try:
            message = self._message_from(event, context.bot_user_id)
            if message is None or not self._first_delivery(body["event_id"]):
                return
        except Exception:  # boundary: one incoming event (its message is not known yet)
            log.exception("reading Slack event %s failed", body.get("event_id"))
            self._say_unreadable(event)
            return
        self._dispatch(message)

    def _say_unreadable(self, event: Any) -> None:
        """Tell the thread a message addressed to the bot arrived malformed (once; other chatter: nothing)."""
        if not isinstance(event, dict) or not (event.get("type") == "app_mention" or event.get("channel_type") == "im"):
            return
        channel, thread = event.get("channel"), event.get("thread_ts") or event.get("ts")
        if isinstance(channel, str) and isinstance(thread, str) and self.engine.claim_event(
                PLATFORM, f"unreadable:{channel}:{thread}:{event.get('ts')}"):
            self.port.post(ThreadRef(PLATFORM, channel, thread), Reply(UNREADABLE))

    def _on_reaction(self, body: dict[str, Any], event: dict[str, Any], context: Any) -> None:
        """Hand a person's reaction to a message (a ✅ on a proposed memory) to the plugins."""
        item, user = event.get("item") or {}, event.get("user")
        if item.get("type") != "message" or not user or user == context.bot_user_id:
            return
        if context.bot_user_id and event.get("item_user") not in (None, context.bot_user_id):
            return  # a reaction to someone else's message: every one in the bot's channels comes by
        try:
            if not self._first_delivery(body["event_id"]):
                return
            reaction = Reaction(PLATFORM, str(item["channel"]), str(item["ts"]), user, str(event.get("reaction", "")))
            self.engine.hook.reaction_added(reaction=reaction, engine=self.engine)
        except Exception:  # boundary: one incoming event
            log.exception("handling Slack reaction %s failed", body.get("event_id"))

    def _on_command(self, ack: Any, command: dict[str, Any], respond: Any) -> None:
        ack()  # Slack shows the user an error unless this lands within 3 s: before any Web API call
        name, user, channel = command["command"], command["user_id"], command["channel_id"]
        argument = from_slack(command.get("text") or "")
        try:
            thread = self._start_thread(channel, f"<@{user}> {name} {escape(self.engine.redact(argument))}".strip())
        except RateLimited:
            respond(text="Slack is asking me to slow down; please try again in a minute.", response_type="ephemeral")
            return
        except SlackApiError as exc:
            log.warning("slash command %s: cannot post in %s (%s)", name, channel, error_code(exc))
            respond(text=f"I can't post in this conversation. Invite me first (`/invite @{self.engine.manifest.name}`),"
                         " or talk to me in a direct message.", response_type="ephemeral")
            return
        self._dispatch(Message(where=ThreadRef(PLATFORM, channel, thread), text=self._chat_line(name, argument),
                               user_id=user, user_name=self._user_name(user), external_id=thread,
                               is_direct=channel.startswith("D")))

    def _on_cancel(self, ack: Any, body: dict[str, Any]) -> None:
        ack()
        run_id = str(body["actions"][0].get("value", ""))
        channel = (body.get("channel") or {}).get("id") or body["container"]["channel_id"]
        thread = (body.get("message") or {}).get("thread_ts") or body["container"].get("message_ts")
        if not run_id.isdigit() or not thread:
            log.warning("cancel click without a run id or thread: %r", body.get("actions"))
            return
        user = body["user"]["id"]
        self._dispatch(Message(where=ThreadRef(PLATFORM, channel, thread), text=f"/cancel {run_id}", user_id=user,
                               user_name=self._user_name(user), is_direct=channel.startswith("D")))

    def _on_choice(self, ack: Any, body: dict[str, Any]) -> None:
        """A button of a message with choices (Approve once / Always / Reject): the chat line it stands for."""
        ack()
        line = str(body["actions"][0].get("value", ""))
        channel = (body.get("channel") or {}).get("id") or body["container"]["channel_id"]
        message = body.get("message") or {}
        thread = message.get("thread_ts") or message.get("ts") or body["container"].get("message_ts")
        if not line.startswith("/") or not thread:
            log.warning("choice click without a line or thread: %r", body.get("actions"))
            return
        user = body["user"]["id"]
        self._dispatch(Message(where=ThreadRef(PLATFORM, channel, thread), text=line, user_id=user,
                               user_name=self._user_name(user), is_direct=channel.startswith("D")))

    # -- catch-up after downtime ------------------------------------------------------------------

    def _on_socket_message(self, client: Any, message: dict[str, Any], raw: str) -> None:
        if message.get("type") == "hello":
            # A reconnect's hello comes before its events (a dict copy here wins that race in practice).
            pending = self._catch_up_from
            self.catch_up_in_background(pending if pending is not None else self.cursors.snapshot())

    def catch_up_in_background(self, since: dict[str, str]) -> None:
        """Start `catch_up(since)` in its own thread (or have the running one go round once more); return at once."""
        with self._catch_up_lock:
            self._catch_up_from = since
            if self._catch_up_thread is not None:
                return
            self._catch_up_thread = threading.Thread(target=self._catch_up_while_wanted, name="slack-catch-up",
                                                     daemon=True)
            self._catch_up_thread.start()

    def _catch_up_while_wanted(self) -> None:
        while True:
            with self._catch_up_lock:
                since, self._catch_up_from = self._catch_up_from, None
                if since is None or self._closing:
                    self._catch_up_thread = None
                    return
            try:
                self.catch_up(since)
            except Exception:  # boundary: one catch-up; the next connection tries again
                log.exception("slack: catching up on missed messages failed")

    def catch_up(self, since: dict[str, str]) -> int:
        """Answer what was addressed to the bot after `since` (channel -> last seen ts) as live; return how many.

        Per channel: its messages and its active threads' replies since then (at
        most `CATCH_UP_MAX_AGE_S` back, `CATCH_UP_MAX_MESSAGES` each), filtered as live events
        are; a message answered before is refused by dispatch's dedupe.
        """
        if not since:
            return 0  # a first start: nothing was seen, so nothing was missed
        bot_user_id = str(self.client.auth_test()["user_id"])
        now = time.time()
        active_since = datetime.fromtimestamp(now - constants.CATCH_UP_MAX_AGE_S, timezone.utc)
        answered = 0
        for channel, cursor in sorted(since.items()):
            if self._closing:
                break
            after = start_after(cursor, now)
            with self.engine.db.reading() as session:
                threads = ChannelCursors(session).active_threads(PLATFORM, channel, active_since,
                                                                 constants.CATCH_UP_MAX_THREADS)
            try:
                missed = missed_messages(self.client, channel, after=after, threads=threads, bot_user_id=bot_user_id)
            except (SlackApiError, RateLimited) as exc:
                log.warning("slack: cannot read what %s said while I was away (%s); its missed messages stay "
                            "unanswered (scopes channels:history, groups:history, im:history)", channel,
                            error_code(exc) if isinstance(exc, SlackApiError) else exc)
                continue
            count = 0
            for event in missed.events:
                if self._closing:
                    break
                self.cursors.saw(channel, event["ts"])
                try:
                    message = self._message_from(event, bot_user_id)
                except Exception:  # boundary: one missed message
                    log.exception("slack: reading missed message %s in %s failed", event.get("ts"), channel)
                    continue
                dispatched = self.engine.receive(message) if message is not None else None
                count += dispatched is not None and not dispatched.duplicate
            # Every channel at DEBUG, the ones with something to say at INFO: a reconnect is routine.
            log.log(logging.INFO if count or missed.cut_off else logging.DEBUG,
                    "slack: %s had %d missed message(s) for me (%d read since %s%s)", channel, count,
                    len(missed.events), after, "; more were left unread" if missed.cut_off else "")
            answered += count
        log.info("slack: caught up on %d channel(s): %d missed message(s) answered", len(since), answered)
        return answered

    # -- from Slack to the engine -----------------------------------------------------------------

    def _message_from(self, event: dict[str, Any], bot_user_id: str | None) -> Message | None:
        """Return the engine's message for an event the bot should act on, or None to ignore it."""
        user = event.get("user")
        if event.get("bot_id") or event.get("subtype") not in SPOKEN_SUBTYPES or not user or user == bot_user_id:
            return None  # the bot's own posts, other bots, edits, joins
        channel, ts = event["channel"], event["ts"]
        raw = event.get("text") or ""
        if not isinstance(raw, str):
            raise TypeError(f"a message's text is {type(raw).__name__}, not text")
        is_direct = event.get("channel_type") == "im"
        where = ThreadRef(PLATFORM, channel, event.get("thread_ts") or ts)
        if event["type"] == "message" and not is_direct:
            if bot_user_id and f"<@{bot_user_id}" in raw:
                return None  # the app_mention event carries it
            if not event.get("thread_ts") or not self.engine.takes_part_in(where):
                return None  # chatter the bot was not asked into
        text = from_slack(raw, bot_user_id) or "help"
        return Message(where=where, text=text, user_id=user, user_name=self._user_name(user), external_id=ts,
                       is_direct=is_direct, received_at=datetime.fromtimestamp(float(ts), timezone.utc))

    def _first_delivery(self, event_id: str) -> bool:
        """Record the event id durably; return False when Slack delivered it before (a retry)."""
        first = self.engine.claim_event(PLATFORM, event_id)
        if not first:
            log.info("slack event %s delivered again; already handled", event_id)
        return first

    def _chat_line(self, name: str, argument: str) -> str:
        """Return the chat line a slash command stands for: `/agent x`, `/ask x`, `/history`, a request."""
        if name != "/threadwork":
            return f"{name} {argument}".strip()
        if not argument:
            return "help"
        first = argument.split(maxsplit=1)[0].lstrip("/!").lower()
        is_command = first in self.engine.commands or first in ("agent", "ask")
        return "/" + argument.lstrip("/!") if is_command else argument

    def _dispatch(self, message: Message) -> None:
        self.engine.receive(message)

    def _start_thread(self, channel: str, text: str) -> str:
        """Post a top-level message (waiting out 429s for a while) and return its ts."""
        deadline = time.monotonic() + THREAD_STARTER_DEADLINE_S
        while True:
            try:
                with rate_limits():
                    return str(self.client.chat_postMessage(channel=channel, text=fit(text, constants.SLACK_EDIT_SAFE_LIMIT),
                                                            unfurl_links=False)["ts"])
            except RateLimited as exc:
                if time.monotonic() + exc.retry_after > deadline:
                    raise
                time.sleep(exc.retry_after)

    def _user_name(self, user_id: str) -> str:
        """Return the person's display name (users.info, cached), or the id when Slack won't say."""
        with self._names_lock:
            if user_id in self._names:
                return self._names[user_id]
        try:
            with rate_limits():
                user = self.client.users_info(user=user_id)["user"]
        except (SlackApiError, RateLimited) as exc:
            log.info("users.info %s: %s", user_id, exc)
            return user_id
        profile = user.get("profile") or {}
        name = profile.get("display_name") or profile.get("real_name") or user.get("real_name") or user.get("name")
        with self._names_lock:
            if len(self._names) >= USER_NAME_CACHE:
                self._names.clear()
            self._names[user_id] = name or user_id
        return name or user_id


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """One thread per request, so a slow request never holds up another's 3-second ack."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's name)
        log.debug("http: " + format, *args)


# -- what the rest of the bot calls ---------------------------------------------------------------


def build_adapter(engine: Engine) -> SlackAdapter:
    """Return the adapter the manifest and environment describe, its bot token checked with Slack."""
    settings, slack = engine.settings, engine.manifest.platforms.slack
    missing = platforms.missing_credentials(engine.manifest, PLATFORM, settings)
    if missing:
        raise ConfigError(f"Slack ({slack.mode} mode) needs {', '.join(missing)}; see the README, Slack")
    client = web_client(settings)
    try:
        client.auth_test()  # Bolt checks the token too, but its error does not say why
    except SlackApiError as exc:
        raise ConfigError(f"Slack refused SLACK_BOT_TOKEN ({error_code(exc)}): use the app's Bot User OAuth Token "
                          "(xoxb-) from its Install App page") from None
    except OSError as exc:
        raise ConfigError(f"cannot reach Slack's Web API at {api_url(settings)}: {exc}") from None
    return SlackAdapter(engine, client, app_token=settings.get("SLACK_APP_TOKEN"),
                        signing_secret=settings.get("SLACK_SIGNING_SECRET") if slack.mode == "http" else None)


def serve(engine: Engine, stop: threading.Event | None = None) -> None:
    """Run the Slack adapter (Socket Mode, or HTTP per `platforms.slack.mode`) until `stop` is set.

    Attaches the live port to the engine first. Credentials Slack refuses, a Slack that cannot
    be reached or a port already taken are logged as one line saying what to do, and `serve`
    returns.
    """
    slack = engine.manifest.platforms.slack
    try:
        adapter = build_adapter(engine)
    except ConfigError as exc:
        log.error("slack: %s", exc)
        return
    engine.attach_port(adapter.port)
    try:
        if slack.mode == "http":
            port = adapter.listen(slack.http_host, slack.http_port)
            log.info("slack: HTTP mode on %s:%s (events at %s, health at %s)", slack.http_host, port, EVENTS_PATH,
                     HEALTH_PATH)
        else:
            adapter.connect()
            log.info("slack: connected over Socket Mode")
        (stop or threading.Event()).wait()
    except SlackApiError as exc:  # apps.connections.open refused the app-level token
        log.error("slack: Slack refused SLACK_APP_TOKEN (%s): generate an app-level token (xapp-) with the "
                  "connections:write scope under Basic Information, App-Level Tokens", error_code(exc))
    except OSError as exc:
        log.error("slack: cannot start (%s): check SLACK_API_URL, or that port %s is free (platforms.slack.http_port)",
                  exc, slack.http_port)
    finally:
        adapter.close()
