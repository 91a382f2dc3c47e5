"""Approvals: a tool call that matches `agent.ask` waits for a person's answer in the thread.

    agent reports a STEP `ASKED` (the command or the diff) ─► stored with the run's events
        ─► `ApprovalMessages` posts it with Approve once / Always / Reject (buttons where the
           platform has them, `/approve` and `/reject` typed anywhere)
    a press or `/approve` ─► `answer` (dispatch: who may start the agent here, a request still
        pending) ─► `Signal.approval` to the run ─► the agent replies to its tool
        ─► STEP `ANSWERED` (who, how; or nobody within agent.approval_timeout_seconds)
        ─► the request's message is edited to its outcome

The run's stored events are the record: which requests were asked, which were answered, by
whom. Nothing here waits on the agent; `answer` only reads the table and sends a signal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.db.repositories import Runs
from bot.errors import CommandError
from bot.progress import format_elapsed
from bot.runs import APPROVAL_ANSWERED, APPROVAL_ASKED
from bot.signals import Signal
from bot.types import AgentRun, Choice, CommandContext, Conversation, EventKind, Reply, RunEvent, RunState

if TYPE_CHECKING:
    from bot.engine import Engine

log = logging.getLogger(__name__)

#: The STEP an agent reports when a tool call waits for approval (`raw["request"]` holds it),
#: and the one it reports when a request was answered or timed out (`raw` says how).
ASKED, ANSWERED = APPROVAL_ASKED, APPROVAL_ANSWERED
#: The answers an agent understands (opencode's `POST /permission/:id/reply` takes the same).
ONCE, ALWAYS, REJECT = "once", "always", "reject"
REPLIES = (ONCE, ALWAYS, REJECT)
#: Characters of a command or diff shown in a request (a Slack section holds 3,000).
DETAIL_CHARS = 2500
#: What people without buttons (the console) are told to type.
TYPED_HINT = "Answer with `/approve`, `/approve always` or `/reject`."

NOTHING_PENDING = "Nothing is waiting for approval in this thread."
CLOSED = "That approval request is closed: {why}."


@dataclass(frozen=True)
class ApprovalRequest:
    """One tool call waiting for a person: its id, the tool class, and what it would do."""

    id: str
    tool: str
    #: The command (bash) or the unified diff (edit); "" when the agent said neither.
    detail: str = ""
    #: The file an edit touches, or the patterns that matched.
    target: str = ""
    #: Seconds it waits before it is rejected.
    timeout_s: float = 0.0

    @classmethod
    def from_event(cls, event: RunEvent) -> ApprovalRequest | None:
        request = (event.raw or {}).get("request") or {}
        if not request.get("id"):
            return None
        return cls(str(request["id"]), str(request.get("tool", "")), str(request.get("detail", "")),
                   str(request.get("target", "")), float(request.get("timeout_s") or 0))

    def as_raw(self) -> dict[str, Any]:
        return {"request": {"id": self.id, "tool": self.tool, "detail": self.detail, "target": self.target,
                            "timeout_s": self.timeout_s}}

    @property
    def label(self) -> str:
        """Return the checklist line of the request: what waits for approval."""
        if self.tool == "bash" and self.detail:
            return f"approval: run `{_one_line(self.detail)}`"
        return f"approval: {self.tool} `{_one_line(self.target or self.detail)}`"


def asked_event(request: ApprovalRequest) -> RunEvent:
    """Return the STEP an agent reports for a new approval request."""
    return RunEvent(EventKind.STEP, name=ASKED, text=request.label, status="waiting", raw=request.as_raw())


def answered_event(request: ApprovalRequest, reply: str, who: str) -> RunEvent:
    """Return the STEP an agent reports once a request is answered; `who` "" means it timed out."""
    return RunEvent(EventKind.STEP, name=ANSWERED, text=request.label, status=reply,
                    raw={"request_id": request.id, "reply": reply, "who": who, "timeout_s": request.timeout_s})


def request_text(request: ApprovalRequest) -> str:
    """Return the approval message: what the agent wants to do and how long it waits."""
    if request.tool == "bash":
        head = "🔐 The agent asks to run a command:"
        body = f"```\n{_cut(request.detail)}\n```"
    elif request.detail:
        head = f"🔐 The agent asks to {request.tool} `{request.target}`:"
        body = f"```diff\n{_cut(request.detail)}\n```"
    else:
        head = f"🔐 The agent asks for `{request.tool}` on `{request.target}`."
        body = ""
    wait = f"Rejected if nobody answers within {format_elapsed(request.timeout_s)}." if request.timeout_s else ""
    return "\n".join(part for part in (head, body, wait) if part)


def outcome_text(request: ApprovalRequest, reply: str, who: str) -> str:
    """Return the approval message once answered: the outcome, who gave it, and what it was about."""
    if not who:
        head = f"⛔ Rejected: nobody answered within {format_elapsed(request.timeout_s)}"
    elif reply == ONCE:
        head = f"✅ Approved once by {who}"
    elif reply == ALWAYS:
        head = f"✅ Always approved by {who}"
    else:
        head = f"⛔ Rejected by {who}"
    return f"{head}: {request.label.removeprefix('approval: ')}"


def choices(request: ApprovalRequest) -> list[Choice]:
    """Return the buttons of a request: each stands for the typed command it sends."""
    return [Choice("Approve once", f"/approve once {request.id}", "primary"),
            Choice("Always", f"/approve always {request.id}"),
            Choice("Reject", f"/reject {request.id}", "danger")]


class ApprovalMessages:
    """The approval messages of one run, in its thread: posted when asked, edited when answered."""

    def __init__(self, engine: Engine, conversation: Conversation) -> None:
        self.engine = engine
        self.conversation = conversation
        self._open: dict[str, tuple[ApprovalRequest, str]] = {}

    def observe(self, event: RunEvent) -> None:
        """Post or edit the message an approval event is about (other events pass)."""
        if event.kind != EventKind.STEP:
            return
        if event.name == ASKED:
            request = ApprovalRequest.from_event(event)
            if request is not None and request.id not in self._open:
                message_id = self.engine.say_choices(self.conversation, request_text(request), choices(request),
                                                     typed_hint=TYPED_HINT)
                self._open[request.id] = (request, message_id)
        elif event.name == ANSWERED:
            opened = self._open.pop(str(event.raw.get("request_id", "")), None)
            if opened is not None:
                request, message_id = opened
                text = outcome_text(request, str(event.raw.get("reply", REJECT)), str(event.raw.get("who", "")))
                self.engine.edit(self.conversation, message_id, Reply(text), final=True)

    def close(self, why: str) -> None:
        """Edit every request still open to say it was never answered (the run ended first)."""
        for request, message_id in self._open.values():
            try:
                self.engine.edit(self.conversation, message_id,
                                 Reply(f"⏹️ Closed unanswered ({why}): {request.label.removeprefix('approval: ')}"),
                                 final=True)
            except Exception:  # boundary: one platform edit; the run's outcome must still land
                log.exception("closing approval request %s failed", request.id)
        self._open.clear()


def pending(runs: Runs, run: AgentRun) -> list[ApprovalRequest]:
    """Return the run's requests nobody has answered yet, oldest first (from its stored events)."""
    asked: dict[str, ApprovalRequest] = {}
    for event in runs.events(run.id):
        if event.kind != EventKind.STEP:
            continue
        if event.name == ASKED and (request := ApprovalRequest.from_event(event)) is not None:
            asked[request.id] = request
        elif event.name == ANSWERED:
            asked.pop(str(event.raw.get("request_id", "")), None)
    return list(asked.values())


def answer(context: CommandContext, reply: str, request_id: str = "") -> str:
    """Send a person's answer to the running run's request (the named one, else the oldest); say what happened.

    Raise `CommandError` (shown as is) when there is nothing to answer: no running run, a
    request already answered or expired, a button pressed after its run ended.
    """
    engine = context.engine
    with engine.db.reading() as session:
        runs = Runs(session)
        running = [run for run in runs.active(context.conversation.id) if run.state == RunState.RUNNING]
        waiting = pending(runs, running[0]) if running else []
        if request_id and not waiting:
            ended = _run_of(runs, context.conversation.id, request_id)
            if ended is not None and ended.state.is_final:
                raise CommandError(CLOSED.format(why=f"run {ended.id} has ended ({ended.state.value})"))
    if not waiting:
        raise CommandError(CLOSED.format(why="it was answered already or timed out") if request_id else NOTHING_PENDING)
    request = next((r for r in waiting if r.id == request_id), None) if request_id else waiting[0]
    if request is None:
        raise CommandError(CLOSED.format(why="it was answered already or timed out"))
    who = context.message.user_name or context.message.user_id
    engine.signals.send(running[0].id, Signal.approval(request.id, reply, who))
    verb = {ONCE: "Approving once", ALWAYS: "Approving always", REJECT: "Rejecting"}[reply]
    return f"{verb}: {request.label.removeprefix('approval: ')}"


def _run_of(runs: Runs, conversation_id: int, request_id: str) -> AgentRun | None:
    """Return the run of the conversation that asked this request, if any did."""
    for run in runs.in_conversation(conversation_id):
        if any(e.name == ASKED and (e.raw.get("request") or {}).get("id") == request_id for e in runs.events(run.id)):
            return run
    return None


def _one_line(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cut(text: str) -> str:
    text = text.replace("```", "'''")
    return text if len(text) <= DETAIL_CHARS else text[:DETAIL_CHARS] + "\n… (cut)"
