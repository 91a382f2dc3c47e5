"""Platform-neutral types: what flows between adapters, the engine, plugins and workers.

Adapters turn platform events into `Message` and implement `ChatPort`; everything else speaks
only these types.
"""

from __future__ import annotations

import enum
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from bot.config import Manifest, Settings
    from bot.db import Database
    from bot.queue import JobQueue
    from bot.redaction import Redactor


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


def as_utc(moment: datetime) -> datetime:
    """Return the datetime as aware UTC (SQLite hands back naive ones for aware columns)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class ThreadRef:
    """Where a conversation lives: a platform, a channel and a thread in it."""

    platform: str
    channel: str
    thread: str

    def __str__(self) -> str:
        return f"{self.platform}:{self.channel}:{self.thread}"


@dataclass(frozen=True)
class Message:
    """One incoming chat message, as an adapter hands it to `Engine.dispatch`."""

    where: ThreadRef
    text: str
    user_id: str
    user_name: str = ""
    #: The platform's id of this message (Slack ts, Discord snowflake); de-duplicates it.
    external_id: str | None = None
    #: True in a direct message with the bot.
    is_direct: bool = False
    received_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class Conversation:
    """A thread the bot takes part in, as stored."""

    id: int
    where: ThreadRef
    title: str = ""
    agent_session_id: str | None = None
    forked_from_id: int | None = None


class Route(str, enum.Enum):
    """What the bot does with a message."""

    COMMAND = "command"  #: run a chat command now, in dispatch
    DIRECT = "direct"  #: answer in chat with the LLM, in a job
    AGENT = "agent"  #: summon the coding agent, in a job


@dataclass(frozen=True)
class RouteDecision:
    """A router's verdict on one message: the route, who decided it and how sure it was."""

    route: Route
    stage: str
    confidence: float
    reason: str
    #: For Route.COMMAND: the command's name and the rest of the line.
    command: str | None = None
    argument: str = ""
    #: The text the chosen route should act on (an override like `/agent fix it` strips
    #: its prefix); None means the message's own text.
    text: str | None = None
    #: A tentative decision is the cheap chain's fallback: a worker may ask the LLM stage
    #: before acting on it.
    tentative: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Return the decision as plain JSON-ready values."""
        return {
            "route": self.route.value,
            "stage": self.stage,
            "confidence": round(self.confidence, 3),
            "reason": self.reason,
        }


@dataclass
class Reply:
    """Something the bot posts or edits into a thread: markdown text and, for a run, its status."""

    text: str
    status: RunStatus | None = None
    #: True while the message will be edited again (an answer still streaming, a run going on).
    partial: bool = False


@dataclass(frozen=True)
class Attachment:
    """A file to upload into a thread."""

    filename: str
    data: bytes
    title: str = ""
    comment: str = ""


@runtime_checkable
class ChatPort(Protocol):
    """What the engine and workers need from a platform: post, edit, upload.

    Implementations raise `bot.errors.RateLimited` when the platform asks them to wait, and
    never block other threads while waiting.
    """

    platform: str

    def post(self, where: ThreadRef, reply: Reply) -> str:
        """Post a reply in the thread; return the platform's id of the new message."""
        ...

    def edit(self, where: ThreadRef, message_id: str, reply: Reply) -> None:
        """Replace the content of a message the bot posted earlier."""
        ...

    def upload(self, where: ThreadRef, attachment: Attachment) -> str:
        """Upload a file into the thread; return the platform's id of the file."""
        ...


@dataclass(frozen=True)
class ThreadMessage:
    """One message read back from a platform thread: what was said there before the bot took part."""

    #: The platform's id of the message (Slack ts, Discord snowflake), as `Message.external_id`.
    external_id: str
    user_id: str
    text: str
    sent_at: datetime
    user_name: str = ""
    #: Posted by a bot or an app (this one included): not someone's words.
    is_bot: bool = False


@runtime_checkable
class ThreadHistoryPort(Protocol):
    """A `ChatPort` that can read a thread's earlier messages (Slack, Discord; the console has none).

    Implementations raise `bot.errors.HistoryRefused` when the platform will never show them
    (a missing scope or permission), `bot.errors.RateLimited` on a 429, anything else when
    asking again later may work.
    """

    def thread_history(self, where: ThreadRef, *, before: str | None, limit: int) -> list[ThreadMessage]:
        """Return the thread's messages older than `before` (a platform message id), oldest first, the newest `limit`."""
        ...


@dataclass(frozen=True)
class Reaction:
    """A person's reaction to a message in a channel, as an adapter hands it to the `reaction_added` hook."""

    platform: str
    channel: str
    #: The platform's id of the message reacted to (Slack ts, Discord snowflake).
    message_id: str
    user_id: str
    #: The emoji as the platform names it: `white_check_mark` on Slack, `✅` on Discord.
    emoji: str
    user_name: str = ""


@dataclass(frozen=True)
class Choice:
    """One button under a message: its label, the chat line a press stands for, and its look."""

    label: str
    #: The chat line the press is dispatched as, as if the presser had typed it (`/approve once per_1`).
    line: str
    #: "primary", "danger" or "" (the platform's default look).
    style: str = ""


@runtime_checkable
class ChoicePort(Protocol):
    """A `ChatPort` that can put buttons under a message (Slack Block Kit, Discord components).

    A press comes back to the engine as the choice's `line`, dispatched as a message of the
    person who pressed it, so the same permissions apply as when they type it. Ports without
    buttons get the text alone, which says what to type instead.
    """

    def post_choices(self, where: ThreadRef, reply: Reply, choices: list[Choice]) -> str:
        """Post the reply with one button per choice; return the platform's id of the new message."""
        ...


class RunState(str, enum.Enum):
    """Where an agent run is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (RunState.DONE, RunState.FAILED, RunState.CANCELLED)


class EventKind(str, enum.Enum):
    """The kinds of typed event an agent run produces."""

    STEP = "step"
    TOOL = "tool"
    TEXT = "text"
    TOKENS = "tokens"
    ERROR = "error"
    STATE = "state"


@dataclass(frozen=True)
class RunEvent:
    """One typed event of an agent run, parsed from the agent's output."""

    kind: EventKind
    #: For TOOL: the tool's name (write, bash, ...); for STATE: the new state.
    name: str = ""
    #: Short human text: a tool's title, a text part, an error message.
    text: str = ""
    #: For TOOL: "completed" or "error".
    status: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    #: The agent's raw event, kept for the log file; never shown whole in chat.
    raw: dict[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=utcnow)


@dataclass
class RunStatus:
    """Everything the status message of one run shows; rendered by `bot.progress`."""

    run_id: int
    state: RunState
    agent: str
    requested_by: str = ""
    elapsed_s: float = 0.0
    queue_position: int = 0
    checklist: list[tuple[str, bool | None]] = field(default_factory=list)
    hidden_items: int = 0
    latest_text: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    note: str = ""
    #: The signed link to the run's live page (`bot.web_links.run_url`); "" without BOT_PUBLIC_URL.
    web_url: str = ""


@dataclass(frozen=True)
class AgentRun:
    """An agent run as stored: who asked for what, in which conversation, and where it is."""

    id: int
    conversation_id: int
    agent: str
    prompt: str
    state: RunState
    requested_by: str = ""
    status_message_id: str | None = None
    session_id: str | None = None
    error: str = ""
    #: The stored message that asked for the run (one run per request message).
    request_message_id: int | None = None
    job_id: str | None = None
    #: Who cancelled it ("" unless someone did).
    cancelled_by: str = ""
    #: host:pid of the worker that claimed it.
    worker: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    created_at: datetime | None = None
    started_at: datetime | None = None
    heartbeat_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass(frozen=True)
class Spend:
    """What agent runs cost over a period, for a person, a channel or everyone."""

    #: "slack:U0ALICE", "slack:C0123", or "" for a total.
    who: str
    runs: int
    tokens: int
    cost: float


@dataclass(frozen=True)
class Resource:
    """A file, diff, log, image or answer a run made, uploaded into its thread and indexed."""

    id: int
    conversation_id: int
    path: str
    size: int
    sha256: str
    run_id: int | None = None
    kind: str = "file"
    platform_file_id: str | None = None
    created_at: datetime | None = None
    media_type: str = "application/octet-stream"
    #: Where it was made: its conversation's platform, channel and thread.
    platform: str = ""
    channel: str = ""
    thread: str = ""
    requested_by: str = ""
    #: The platform's link to the uploaded file, once uploaded.
    permalink: str | None = None

    @property
    def short_id(self) -> str:
        """Return the id chat commands show and accept, e.g. `r42`."""
        return f"r{self.id}"


@dataclass(frozen=True)
class SearchHit:
    """One resource found by a search, with the text around the match and its rank."""

    resource: Resource
    #: A short line of the text around the first matched word (or the path).
    snippet: str
    #: Higher is better; comparable only within one search.
    score: float


@dataclass(frozen=True)
class MemoryItem:
    """Something recalled for the model: a text, where it came from, and its size in tokens."""

    text: str
    source: str
    tokens: int
    score: float = 0.0


@dataclass(frozen=True)
class CommandContext:
    """What a chat command handler gets: the message, its conversation and the engine."""

    message: Message
    conversation: Conversation
    argument: str
    engine: EngineAPI
    match: re.Match[str] | None = None
    #: Called with the message's stored id once dispatch has stored it (commands run first):
    #: e.g. to record the message as a memory's source.
    on_stored: list[Callable[[int], None]] = field(default_factory=list)


CommandHandler = Callable[[CommandContext], "str | Reply | None"]
#: What a command handler returns when it posted its answer itself (`engine.say`, to keep the
#: message's id, e.g. a notice a worker edits later): dispatch then posts nothing more.
ANSWERED_ITSELF = Reply("")


@dataclass(frozen=True)
class Command:
    """A chat command a plugin registers: `/name argument` or a line matching `pattern`.

    Handlers run inside `dispatch`, so they must be quick (database reads, a short reply);
    anything slow belongs in a job.
    """

    name: str
    help: str
    handler: CommandHandler
    usage: str = ""
    #: A regular expression that also triggers the command on a plain chat line.
    pattern: re.Pattern[str] | None = None
    #: The manifest permission a user needs (see `permissions` in manifest.yml).
    permission: str | None = None


@dataclass(frozen=True)
class HistoryEntry:
    """One stored message of a thread, as history for people and models."""

    id: int
    role: str
    author: str
    text: str
    created_at: datetime
    route: str | None = None


@dataclass(frozen=True)
class AgentTask:
    """What an agent gets for one run: where to work, what to do, and the limits."""

    run_id: int
    workspace: Path
    #: The whole task text: the request, recalled context and constraints.
    prompt: str
    #: The agent's own state (sessions, caches): one directory per conversation.
    state_dir: Path
    timeout_s: float
    #: The agent session a follow-up continues, if any.
    session_id: str | None = None
    model: str | None = None
    allow_webfetch: bool = False
    #: Environment variables (beyond the basics) the agent may see; never the bot's secrets.
    env: dict[str, str] = field(default_factory=dict)
    #: True for a fork's first run: `session_id` is the parent's session, to be forked into a new
    #: session, not continued (on the warm server with `POST /session/:id/fork`; on the cold path
    #: from the copy in this conversation's state).
    fork_session: bool = False
    #: Tool calls that wait for a person's approval (`agent.ask`): (tool class, pattern) pairs,
    #: e.g. ("bash", "git push*"). Only an agent that takes mid-run messages can ask.
    ask: tuple[tuple[str, str], ...] = ()
    #: Seconds an approval request waits before it is rejected (`agent.approval_timeout_seconds`).
    approval_timeout_s: float = 300.0


@dataclass(frozen=True)
class AgentOutcome:
    """How an agent run ended."""

    session_id: str | None
    final_text: str
    error: str = ""
    cancelled: bool = False
    timed_out: bool = False


class Agent(Protocol):
    """A coding agent a plugin registers through `register_agents`: the agent protocol.

    - `name` is what `agent.name` in manifest.yml selects (and what the run row records).
    - `run` is called in a worker (an RQ job or a thread of the console bot) and blocks until
      the agent has finished. It works only in `task.workspace` and keeps its own state under
      `task.state_dir`; its environment holds nothing of the bot's beyond `task.env`.
    - `on_event` is called once per event, in order, from the calling thread; the worker
      redacts, stores and shows each one (a TOOL event is a checklist line, TEXT the latest
      words, TOKENS the token count, ERROR a note).
    - When `cancel` is set, the agent and every process it started are ended within seconds
      and `run` returns `cancelled=True`; past `task.timeout_s` likewise, with `timed_out=True`
      and an `error`.
    - The outcome's `session_id` is kept for the conversation's next run; its `final_text`
      is posted as the answer; a non-empty `error` fails the run and is shown as it is.
      Expected failures may also raise `bot.errors.UserFacingError`, whose message is shown.

    `plugins.agents.cli_runner` does all of this for an agent that is a program printing one
    event per line (JSON, say); `plugins.agents.opencode` is built on it.
    """

    name: str

    def run(self, task: AgentTask, on_event: Callable[[RunEvent], None], cancel: threading.Event) -> AgentOutcome:
        """Run the task to its end (or until `cancel` is set), reporting each event; return how it ended."""
        ...


@runtime_checkable
class SteerableAgent(Agent, Protocol):
    """An agent that takes messages while it runs: steering and approvals (issue 14).

    The worker calls `run_with_inbox` instead of `run` when `steerable` is true. The inbox
    (`bot.signals.RunInbox`) carries what people send the running run: `inbox.cancel` is
    `run`'s cancel event; `inbox.next()`/`inbox.pending()` give steering messages
    (`Signal.steer`: hand `text` to the agent at its next step and report a STEP named
    `bot.runs.STEER_STEP`) and answers to approval requests (`Signal.approval`). The agent asks for
    approval by reporting a STEP named `bot.approvals.ASKED` and reports the answer, or
    its timeout, as a STEP named `bot.approvals.ANSWERED`. Steering messages it
    could not hand over (it fell back to a path that cannot take them) are left in the
    inbox: the worker queues each as the next run.

    `steerable` may change with configuration (opencode: only `agent.mode: warm`); `dispatch`
    reads it to tell a person whether their message steers the run or waits for the next.

    `prepared_workspace` hands a new conversation a workspace made and opened ahead of time.

    `sessions_in_worker` is true when a session lives in the worker process that ran it (a
    server per worker): the conversation's next runs then go to that worker while it can take
    them (`bot.queue.RedisQueue`), and are carried over to another otherwise.
    """

    steerable: bool
    sessions_in_worker: bool

    def run_with_inbox(self, task: AgentTask, on_event: Callable[[RunEvent], None], inbox: Any) -> AgentOutcome:
        """Run the task like `run`, taking steering messages and approval answers from `inbox`."""
        ...

    def prepared_workspace(self) -> Path | None:
        """Return a new, empty git workspace the agent has already opened, now the caller's; None when it has none.

        A new conversation's first run then starts there (its workspace is a link to it) and
        skips what the agent spends on a directory it has not seen (opencode: ~1 s).
        """
        ...


@dataclass(frozen=True)
class HealthCheck:
    """One line of `python -m bot doctor`: what was checked, how it went, how to fix it."""

    name: str
    #: True: fine; False: broken (doctor fails); None: a warning.
    ok: bool | None
    detail: str
    fix: str = ""


@runtime_checkable
class EngineAPI(Protocol):
    """What plugins may use of the engine: hooks receive it as `engine` (`bot.engine.Engine`).

    Everything posted through it is redacted and persisted; everything read comes back as the
    domain types above. A plugin keeps no engine of its own between hook calls.
    """

    settings: Settings
    manifest: Manifest
    db: Database
    queue: JobQueue
    redact: Redactor
    #: The chat commands every plugin registered, by name (collected once, at start).
    commands: dict[str, Command]
    #: The coding agents every plugin registered, by name (collected once, at start).
    agents: dict[str, Agent]

    def say(self, conversation: Conversation, reply: Reply | str, *, reply_to: int | None = None) -> str:
        """Post a reply into the conversation's thread, store it, and return its message id."""
        ...

    def edit(self, conversation: Conversation, message_id: str, reply: Reply | str, *, final: bool = False,
             reply_to: int | None = None) -> None:
        """Replace a message the bot posted; with `final`, also store the text as the reply."""
        ...

    def upload(self, conversation: Conversation, attachment: Attachment) -> str:
        """Upload a file into the thread, redacted, and return the platform's file id."""
        ...

    def history(self, conversation_id: int, limit: int = ..., before_id: int | None = None, *,
                without_run_status: bool = False) -> list[HistoryEntry]:
        """Return the conversation's last messages, oldest first."""
        ...

    def plugin_settings(self, name: str) -> dict[str, Any]:
        """Return the manifest's settings for one plugin (empty when it has none)."""
        ...

    def port_for(self, platform: str) -> ChatPort:
        """Return the chat port for a platform."""
        ...
