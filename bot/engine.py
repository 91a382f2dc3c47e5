"""The engine: one `dispatch(message)` funnel, and the services jobs and plugins share.

`dispatch` persists the message, runs the cheap routing stages and then either runs a chat
command or enqueues a job. It never waits on a model or an agent, so every platform's 3-second
acknowledgement holds.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import pluggy

from bot import constants, logs, metrics, runs
from bot.config import Manifest, Settings, load_manifest
from bot.context import ContextBuilder
from bot.db import Database
from bot.db.inbox import Inbox
from bot.db.repositories import Conversations, Messages, ProcessedEvents, Runs
from bot.errors import ConfigError, DuplicateEvent, PermissionDenied, RateLimited, UserFacingError
from bot.memory import within_budget
from bot.plugins import make_plugin_manager
from bot.queue import InProcessQueue, JobQueue, RedisQueue
from bot.rate_budget import EDIT, POST, RateBudget
from bot.redaction import Redactor
from bot.signals import STEER, RunSignals, Signal
from bot.types import (
    ANSWERED_ITSELF,
    Agent,
    AgentRun,
    Attachment,
    ChatPort,
    Choice,
    ChoicePort,
    Command,
    CommandContext,
    Conversation,
    HistoryEntry,
    MemoryItem,
    Message,
    Reply,
    Route,
    RouteDecision,
    RunState,
    ThreadRef,
)

log = logging.getLogger(__name__)

#: What a person sees when handling their message failed unexpectedly.
SOMETHING_WENT_WRONG = "Sorry, something went wrong with that message; the error is in the bot's log."
#: What a person is told when their message reached the bot malformed (a platform payload it cannot read).
UNREADABLE = "I could not read that message: it reached me malformed. Please send it again."
#: What a person is told when the manifest's permissions refuse what they asked for.
NOT_ALLOWED_AGENT = (
    "You are not allowed to start the coding agent here (the manifest's `permissions.agent`), so I "
    "did not start it. I can answer in chat: ask with `/ask <question>`."
)
NOT_ALLOWED_ASK = ("You are not allowed to get answers from me here (the manifest's `permissions.ask`); "
                   "an admin can add you.")
NOT_ALLOWED_ANYTHING = ("You are not allowed to ask me or start the agent here (the manifest's `permissions`); "
                        "an admin can add you.")
#: What a thread is told when its work went to a Redis queue that no worker takes jobs from.
NO_WORKER = "Queued; no worker is running: start `python -m bot worker`."
#: Dotted path of the job that handles a message routed to a direct answer or the agent.
HANDLE_MESSAGE_JOB = "workers.jobs.handle_message"


@dataclass(frozen=True)
class Dispatched:
    """What `dispatch` did with a message."""

    message_id: int
    conversation: Conversation
    decision: RouteDecision | None
    #: The job that will finish the work, if one was enqueued.
    job_id: str | None = None
    #: True when the platform delivered this message before and nothing was done again.
    duplicate: bool = False


T = TypeVar("T")

#: The external id a reply holds between being stored and being posted: which process posts it.
UNPOSTED = "unposted:"


def unposted_marker() -> str:
    """Return a placeholder external id naming this process (`unposted:host:pid:random`)."""
    return f"{UNPOSTED}{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def poster_of(marker: str) -> tuple[str, int] | None:
    """Return the host and pid a placeholder names, or None if it is not one."""
    if not marker.startswith(UNPOSTED):
        return None
    host_pid, _, _random = marker[len(UNPOSTED):].rpartition(":")
    host, _, pid = host_pid.rpartition(":")
    return (host, int(pid)) if pid.isdigit() else None


def patiently(call: Callable[[], T]) -> T:
    """Return `call()`; when the platform answers 429, wait its Retry-After and try again (a few times).

    A post is one message a person waits for: it lands late rather than never. Edits of live
    messages have their own, non-blocking path (`bot.progress.LiveMessage`).
    """
    for attempt in range(constants.RATE_LIMIT_RETRIES + 1):
        try:
            return call()
        except RateLimited as exc:
            if attempt == constants.RATE_LIMIT_RETRIES or exc.retry_after > constants.RATE_LIMIT_MAX_WAIT_S:
                raise
            log.info("rate limited; posting again in %gs", exc.retry_after)
            time.sleep(exc.retry_after)
    raise AssertionError("unreachable")

class Engine:
    """The core: configuration, database, plugins, queue and the chat ports, behind dispatch."""

    def __init__(
        self,
        settings: Settings,
        manifest: Manifest,
        db: Database,
        queue: JobQueue,
        pm: pluggy.PluginManager,
    ) -> None:
        self.settings = settings
        self.manifest = manifest
        self.db = db
        self.queue = queue
        self.pm = pm
        self.hook = pm.hook
        self.redact = Redactor(settings.secret_values)
        self.inbox = Inbox(db.engine)
        self.signals = RunSignals(settings.redis_url)
        #: Each channel's budget of posts and edits, shared through Redis by every process.
        self.rate_budget = RateBudget.from_url(settings.redis_url)
        #: The context builder the memory plugins answer `recall` with (cached per conversation).
        self.context = ContextBuilder(db, thread_share=manifest.memory.thread_share,
                                      half_life_days=manifest.memory.half_life_days)
        self._ports: dict[str, ChatPort] = {}
        self._ports_lock = threading.Lock()
        self._workers_seen: tuple[float, int | None] = (float("-inf"), None)
        self.commands: dict[str, Command] = {}
        for commands in self.hook.register_commands():
            for command in commands or ():
                self.commands.setdefault(command.name, command)
        self.agents: dict[str, Agent] = {}
        for agents in self.hook.register_agents(engine=self):
            for agent in agents or ():
                self.agents.setdefault(agent.name, agent)
        self.hook.startup.call_historic(kwargs={"engine": self})

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        queue: JobQueue | None = None,
        load_entrypoints: bool = True,
        migrate: bool = True,
    ) -> Engine:
        """Return an engine built from the environment: manifest, database, queue, plugins."""
        settings = settings or Settings.from_env()
        manifest = load_manifest(settings.manifest_path)
        db = Database(settings.database_url)
        if migrate:
            db.migrate()
        if queue is None:
            queue = RedisQueue(settings.redis_url) if settings.redis_url else InProcessQueue()
        pm = make_plugin_manager(manifest, load_entrypoints=load_entrypoints, trace=settings.trace_plugins)
        return cls(settings, manifest, db, queue, pm)

    # -- the funnel -------------------------------------------------------------------------

    def receive(self, message: Message) -> Dispatched | None:
        """Dispatch a message at an adapter's boundary; never raises.

        An expected failure is told to the thread as it is; anything else is logged with its
        traceback and told in one plain sentence.
        """
        try:
            return self.dispatch(message)
        except UserFacingError as exc:
            text = str(exc)
        except Exception:  # boundary: one incoming message
            log.exception("dispatching a message in %s failed", message.where)
            text = SOMETHING_WENT_WRONG
        try:
            self.port_for(message.where.platform).post(message.where, self.redacted(text))
        except Exception:  # boundary: telling the thread failed too; the log has both
            log.exception("telling %s about a failure failed", message.where)
        return None

    @metrics.observed_dispatch
    def dispatch(self, message: Message) -> Dispatched:
        """Route the message cheaply, persist it, then answer its command or enqueue its job.

        One transaction stores the message, its routing decision and, for a command, the reply;
        the reply is posted after the commit. A secret pasted into the chat is stored, routed
        and handed on redacted.
        """
        message = replace(message, text=self.redact(message.text))
        conversation = self.inbox.conversation(message.where, message.text[:80])
        logs.bind(conversation_id=conversation.id)
        if message.external_id is not None and self.inbox.find(conversation.id, message.external_id):
            return self._duplicate(message, conversation)
        decision = self.hook.route_message(message=message, conversation=conversation, engine=self)
        refusal = self.refusal(message, decision)
        steered = self._run_to_steer(message, conversation, decision) if refusal is None else None
        if steered is not None:
            # Recorded as what happens: steering, or (its agent cannot take it) the next run.
            stage = runs.STEER_STAGE if self._steerable(steered) else runs.QUEUE_STAGE
            decision = RouteDecision(Route.AGENT, stage, 1.0, f"{stage}: run {steered.id} is running",
                                     text=decision.text)
        on_stored: list[Callable[[int], None]] = []
        if refusal is not None:
            reply: Reply | None = self.redacted(refusal)
        else:
            reply = self._run_command(message, conversation, decision, on_stored) \
                if decision.route == Route.COMMAND else None
        try:
            marker = unposted_marker()
            message_id, reply_id = self._store(message, conversation, decision, reply, reply_marker=marker)
        except DuplicateEvent:  # the same delivery raced this one and stored first
            return self._duplicate(message, conversation)
        for stored in on_stored:
            try:
                stored(message_id)
            except Exception:  # boundary: a command's follow-up; the reply stands
                log.exception("a command's follow-up on message %s failed", message_id)
        if reply is not None:
            self.post_stored(conversation, reply, reply_id, marker)
            return Dispatched(message_id, conversation, decision)
        if decision.route == Route.COMMAND:  # the command posted its answer itself
            return Dispatched(message_id, conversation, decision)
        if steered is not None and self._steer(message, conversation, decision, steered, message_id):
            return Dispatched(message_id, conversation, decision)
        job_id = f"message-{message_id}"
        self.queue.enqueue(
            HANDLE_MESSAGE_JOB,
            message_id,
            decision.route.value,
            decision.text if decision.text is not None else message.text,
            decision.tentative,
            job_id=job_id,
            timeout=self.agent_job_timeout if decision.route == Route.AGENT else constants.CHAT_JOB_TIMEOUT_S,
        )
        if self.listening_workers() == 0:
            self.port_for(message.where.platform).post(message.where, Reply(NO_WORKER))
        return Dispatched(message_id, conversation, decision, job_id=job_id)

    def _run_to_steer(self, message: Message, conversation: Conversation, decision: RouteDecision) -> AgentRun | None:
        """Return the thread's running run if this message should steer it, else None.

        A message that would start a run or get a chat answer steers the run in progress
        instead (issue 14: steering is the default), when its speaker may start the agent
        here. Commands stay commands; `/queue <task>` asks for the next run and `/ask` for a
        chat answer, on purpose.
        """
        if decision.route == Route.COMMAND or decision.stage == runs.QUEUE_STAGE:
            return None
        if decision.route == Route.DIRECT and not decision.tentative and decision.stage == "explicit":
            return None
        if not self.manifest.allows("agent", message.user_id, message.where):
            return None
        with self.db.reading() as session:
            active = Runs(session).active(conversation.id)
        return next((run for run in active if run.state == RunState.RUNNING), None)

    def _steer(self, message: Message, conversation: Conversation, decision: RouteDecision, run: AgentRun,
               message_id: int) -> bool:
        """Hand the message to the running run; return False when its agent cannot take it (it is queued)."""
        text = decision.text if decision.text is not None else message.text
        if self._steerable(run):
            who = message.user_name or message.user_id
            self.signals.send(run.id, Signal(STEER, who=who, text=text, data={"message_id": message_id}))
            return True
        self.port_for(message.where.platform).post(message.where, self.redacted(
            runs.CANNOT_STEER.format(run=run.id, agent=run.agent)))
        return False

    def _steerable(self, run: AgentRun) -> bool:
        """Return True if the run's agent takes messages while it runs (`bot.types.SteerableAgent`)."""
        return bool(getattr(self.agents.get(run.agent), "steerable", False))

    def say_choices(self, conversation: Conversation, reply: Reply | str, choices: list[Choice], *,
                    typed_hint: str = "") -> str:
        """Post a reply with buttons (where the platform has them, else `typed_hint` after it); return its id."""
        reply = self.redacted(reply)
        port = self.port_for(conversation.where.platform)
        self.rate_budget.take(conversation.where, POST)
        if isinstance(port, ChoicePort):
            message_id = patiently(lambda: port.post_choices(conversation.where, reply, choices))
        else:
            reply = Reply(f"{reply.text}\n{typed_hint}".strip())
            message_id = patiently(lambda: port.post(conversation.where, reply))
        with self.inbox.transaction() as cursor:
            self.inbox.add_message(cursor, conversation.id, "assistant", reply.text, external_id=message_id)
        return message_id

    def persist_and_route(self, message: Message) -> Dispatched:
        """Route the message cheaply and store it with its decision; act on nothing."""
        message = replace(message, text=self.redact(message.text))
        conversation = self.inbox.conversation(message.where, message.text[:80])
        decision = self.hook.route_message(message=message, conversation=conversation, engine=self)
        try:
            message_id, _ = self._store(message, conversation, decision, None)
        except DuplicateEvent:
            return self._duplicate(message, conversation)
        return Dispatched(message_id, conversation, decision)

    def _duplicate(self, message: Message, conversation: Conversation) -> Dispatched:
        """Return what dispatch did for a message the platform delivered again: nothing."""
        known = self.inbox.find(conversation.id, message.external_id or "")
        return Dispatched(known or 0, conversation, None, duplicate=True)

    def _store(self, message: Message, conversation: Conversation, decision: RouteDecision,
               reply: Reply | None, *, reply_marker: str | None = None) -> tuple[int, int | None]:
        inbox = self.inbox
        participant_id = inbox.participant(conversation.id, message.user_id, message.user_name)
        with inbox.transaction() as cursor:
            message_id = inbox.add_message(cursor, conversation.id, "user", message.text,
                                           external_id=message.external_id, participant_id=participant_id,
                                           created_at=message.received_at)
            inbox.record_decision(cursor, message_id, decision)
            reply_id = None
            if reply is not None:
                reply_id = inbox.add_message(cursor, conversation.id, "assistant", reply.text,
                                             external_id=reply_marker, reply_to_id=message_id)
        return message_id, reply_id

    def refusal(self, message: Message, decision: RouteDecision) -> str | None:
        """Return why the speaker may not have what the message was routed to, or None.

        A decided route needs its permission (`agent`, `ask`); an undecided one needs either,
        since the LLM stage may still choose. Refused here, a request costs no job and no model.
        """
        if decision.route == Route.COMMAND:
            return None
        may_agent = self.manifest.allows("agent", message.user_id, message.where)
        may_ask = self.manifest.allows("ask", message.user_id, message.where)
        if not may_agent and not may_ask:
            return NOT_ALLOWED_ANYTHING
        if decision.tentative:
            return None
        if decision.route == Route.AGENT and not may_agent:
            return NOT_ALLOWED_AGENT
        if decision.route == Route.DIRECT and not may_ask:
            return NOT_ALLOWED_ASK
        return None

    def _run_command(self, message: Message, conversation: Conversation, decision: RouteDecision,
                     on_stored: list[Callable[[int], None]] | None = None) -> Reply | None:
        command = self.commands.get(decision.command or "")
        if command is None:
            return Reply(f"I don't know the command `{decision.command}`. Type `help` for the list.")
        try:
            if command.permission and not self.manifest.allows(command.permission, message.user_id, message.where):
                raise PermissionDenied(f"You are not allowed to use `{command.name}` here ({command.permission} permission).")
            match = command.pattern.search(message.text) if command.pattern else None
            result = command.handler(CommandContext(message, conversation, decision.argument, self, match,
                                                    on_stored if on_stored is not None else []))
        except UserFacingError as exc:
            result = str(exc)
        except Exception:  # boundary: one incoming message
            log.exception("command %s failed", command.name)
            result = f"Sorry, `{command.name}` failed unexpectedly; the error is in the bot's log."
        if result is ANSWERED_ITSELF:
            return None
        if isinstance(result, Reply):
            return self.redacted(result)
        return self.redacted(result or f"Done: `{command.name}`.")

    def post_stored(self, conversation: Conversation, reply: Reply, reply_id: int | None,
                    marker: str | None = None) -> None:
        """Post a reply already stored (after a 429, again: see `patiently`) and record the
        platform's id in place of its placeholder; if the platform refuses it, the row goes too.

        A process that dies between storing and posting leaves the placeholder, and the reaper
        posts the reply (`workers.reaper.post_unposted_replies`). Command replies (`dispatch`)
        and runs' answers (`bot.runs.RunAnswer`) come this way.
        """
        port = self.port_for(conversation.where.platform)
        try:
            self.rate_budget.take(conversation.where, POST)
            posted = patiently(lambda: port.post(conversation.where, reply))
            if reply_id is not None and marker is not None:
                with self.inbox.transaction() as cursor:
                    self.inbox.replace_external_id(cursor, reply_id, marker, posted)
        except Exception:  # boundary: the platform call for one message
            log.exception("posting a stored reply to %s failed", conversation.where)
            if reply_id is not None:
                with self.inbox.transaction() as cursor:
                    self.inbox.delete_message(cursor, reply_id)

    # -- the thread: everything posted goes through redaction and is persisted -------------------

    def say(self, conversation: Conversation, reply: Reply | str, *, reply_to: int | None = None) -> str:
        """Post a reply into the conversation's thread, store it, and return its message id."""
        reply = self.redacted(reply)
        port = self.port_for(conversation.where.platform)
        self.rate_budget.take(conversation.where, POST)
        message_id = patiently(lambda: port.post(conversation.where, reply))
        with self.inbox.transaction() as cursor:
            self.inbox.add_message(cursor, conversation.id, "assistant", reply.text, external_id=message_id,
                                   reply_to_id=reply_to)
        return message_id

    def edit(self, conversation: Conversation, message_id: str, reply: Reply | str, *, final: bool = False,
             reply_to: int | None = None, wait_for_budget: bool = True) -> None:
        """Replace a message the bot posted; with `final`, also store the text as the reply.

        :param wait_for_budget: False for an intermediate edit of a live message: when the
            channel's rate budget has no token now, raise `BudgetSpent` (a `RateLimited`) saying
            when to try again, instead of waiting.
        """
        reply = self.redacted(reply)
        if wait_for_budget:
            self.rate_budget.take(conversation.where, EDIT)
        else:
            self.rate_budget.take_now(conversation.where, EDIT)
        self.port_for(conversation.where.platform).edit(conversation.where, message_id, reply)
        if final:
            with self.inbox.transaction() as cursor:
                self.inbox.store_reply(cursor, conversation.id, message_id, reply.text, reply_to)

    def upload(self, conversation: Conversation, attachment: Attachment) -> str:
        """Upload a file into the thread, redacted, and return the platform's file id."""
        clean = Attachment(attachment.filename, self.redact.bytes(attachment.data), attachment.title,
                           self.redact(attachment.comment))
        port = self.port_for(conversation.where.platform)
        self.rate_budget.take(conversation.where, POST)
        return patiently(lambda: port.upload(conversation.where, clean))

    def open_thread(self, conversation_where: ThreadRef, text: str) -> ThreadRef:
        """Start a new thread in the conversation's channel with `text` (redacted); return where it is.

        A port with `open_thread` decides what a new thread is (Discord: a thread in the channel;
        the console: a new thread name); otherwise the text is posted top-level in the channel
        and that message starts the thread (Slack's model: the thread is the message's ts).
        """
        port = self.port_for(conversation_where.platform)
        text = self.redact(text)
        opener = getattr(port, "open_thread", None)
        if callable(opener):
            return opener(conversation_where, text)
        channel = ThreadRef(conversation_where.platform, conversation_where.channel, "")
        return ThreadRef(channel.platform, channel.channel, port.post(channel, Reply(text)))

    def file_link(self, conversation: Conversation, file_id: str) -> str | None:
        """Return the platform's link to a file uploaded lately into the conversation, if it has one."""
        link = getattr(self.port_for(conversation.where.platform), "file_link", None)
        return link(file_id) if callable(link) else None

    def upload_limit(self, conversation: Conversation) -> int:
        """Return the largest file, in bytes, the conversation's platform takes in one upload."""
        port = self.port_for(conversation.where.platform)
        limit = getattr(port, "upload_limit", None)
        return limit(conversation.where) if callable(limit) else constants.DEFAULT_UPLOAD_LIMIT_BYTES

    def redacted(self, reply: Reply | str) -> Reply:
        """Return the reply as it may be posted and stored: every secret the redactor knows replaced."""
        if isinstance(reply, str):
            return Reply(self.redact(reply))
        return Reply(self.redact(reply.text), reply.status, reply.partial)

    # -- chat ports ---------------------------------------------------------------------------

    def attach_port(self, port: ChatPort) -> None:
        """Use this port for its platform (an adapter attaches its live one at start)."""
        with self._ports_lock:
            self._ports[port.platform] = port

    def after_fork(self) -> None:
        """Make this engine usable in a forked child (an RQ work-horse).

        A lock another thread of the parent held at the moment of the fork (the reaper resolving
        a chat port, say) stays held forever in the child, so each of the engine's own is made
        anew; the database pool is dropped without closing the parent's connections.
        """
        self.db.engine.dispose(close=False)
        self._ports_lock = threading.Lock()
        for part in (self.inbox, self.context, self.signals, self.rate_budget.buckets):
            if hasattr(part, "_lock"):
                part._lock = threading.Lock()

    def port_for(self, platform: str) -> ChatPort:
        """Return the chat port for a platform, asking the `chat_port` hook on first use."""
        with self._ports_lock:
            port = self._ports.get(platform)
            if port is None:
                port = self.hook.chat_port(platform=platform, engine=self)
                if port is None:
                    raise ConfigError(f"no adapter can post to {platform!r} from this process")
                self._ports[platform] = port
            return port

    def claim_event(self, platform: str, event_id: str) -> bool:
        """Record a platform event id durably; return True the first time, False for a redelivery."""
        with self.db.session() as session:
            return ProcessedEvents(session).claim(platform, event_id)

    def takes_part_in(self, where: ThreadRef) -> bool:
        """Return whether the bot has a conversation in this thread (it was asked into it)."""
        with self.db.reading() as session:
            return Conversations(session).find(where) is not None

    def healthy(self) -> bool:
        """Return whether the database answers (health checks); never raises."""
        try:
            self.db.check()
        except Exception:  # boundary: a health probe reports, it never raises
            log.exception("health check: the database is unreachable")
            return False
        return True

    def listening_workers(self) -> int | None:
        """Return how many workers take queued jobs (None: this process runs them), cached briefly.

        A count of 0 is asked again every time: it makes dispatch tell the thread that no worker
        runs, which a worker started since must not be told.
        """
        checked_at, count = self._workers_seen
        now = time.monotonic()
        if now - checked_at >= constants.WORKERS_RECHECK_S or count == 0:
            count = self.queue.listening_workers()
            self._workers_seen = (now, count)
        return count

    # -- reads plugins and jobs share -------------------------------------------------------------

    def history(self, conversation_id: int, limit: int = constants.HISTORY_DEFAULT_ROWS,
                before_id: int | None = None, *, without_run_status: bool = False) -> list[HistoryEntry]:
        """Return the conversation's last messages, oldest first (optionally without run statuses)."""
        with self.db.reading() as session:
            return Messages(session).recent(conversation_id, limit, before_id, without_run_status=without_run_status)

    def recall(self, message: Message, conversation: Conversation, budget_tokens: int) -> list[MemoryItem]:
        """Return what the memory plugins recall for the message, merged within the budget."""
        items = [item for result in self.hook.recall(message=message, conversation=conversation,
                                                       budget_tokens=budget_tokens, engine=self)
                 for item in result or ()]
        return within_budget(items, budget_tokens)

    def remember(self, message: Message, conversation: Conversation, reply: str) -> None:
        """Hand a finished exchange to the memory plugins, redacted like everything stored."""
        clean = replace(message, text=self.redact(message.text))
        self.hook.remember(message=clean, conversation=conversation, reply=self.redact(reply), engine=self)

    def plugin_settings(self, name: str) -> dict[str, Any]:
        """Return the manifest's settings for one plugin (empty when it has none)."""
        return dict(self.manifest.plugins.settings.get(name, {}))

    @property
    def agent_job_timeout(self) -> int:
        return self.manifest.agent.timeout_seconds + constants.AGENT_JOB_GRACE_S

    def close(self) -> None:
        """Stop the queue and close the database."""
        self.queue.close()
        self.db.close()


_current: Engine | None = None
_current_pid = 0
_current_lock = threading.Lock()


def set_current(engine: Engine | None) -> None:
    """Make `engine` the one this process's jobs use."""
    global _current, _current_pid
    with _current_lock:
        _current, _current_pid = engine, os.getpid()


def current() -> Engine:
    """Return this process's engine, building it from the environment on first use (RQ).

    In an RQ work-horse (a fork of the worker) the engine was made fork-safe as the fork
    happened (`_after_fork_in_child`).
    """
    global _current, _current_pid
    with _current_lock:
        if _current is None:
            _current = Engine.from_settings()
        _current_pid = os.getpid()
        return _current


def _after_fork_in_child() -> None:
    """Give a forked child fresh locks: the module's, and the current engine's (`Engine.after_fork`)."""
    global _current_lock, _current_pid
    _current_lock = threading.Lock()
    if _current is not None:
        _current.after_fork()
        _current_pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)
