"""The life of an agent run: queued, running, then done, failed or cancelled, one at a time.

    start_run ─► run row (queued) + status message ─► enqueue `RUN_JOB`
    claim ─► running (the conversation's oldest queued run, and nothing else running)
    events ─► fold_event ─► RunStatus ─► bot.progress.render_status
    finish_run ─► a final state, shown in the status message ─► kick_next

This module decides every state change of a run; the job that executes a run
(`workers.agent_run`), the `/cancel` command and the reaper all come through here. The
`agent_runs` table is the source of truth: whether a run exists, who cancelled it and how it
ended are read from it (`bot.db.repositories.Runs`), never from the text of a message.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from bot import constants, web_links
from bot.db.repositories import Conversations, Messages, Runs
from bot.errors import UserFacingError
from bot.progress import render_status
from bot.signals import CANCEL, Signal
from bot.types import (
    AgentRun,
    Conversation,
    EventKind,
    Message,
    Reply,
    RunEvent,
    RunState,
    RunStatus,
    as_utc,
    utcnow,
)

if TYPE_CHECKING:
    from bot.engine import Engine

#: The job that executes one run, named by dotted path (the core imports no worker module).
RUN_JOB = "workers.agent_run.run_agent"
#: The STEP event an agent sends when a tool starts (its text is the checklist label).
RUNNING_STEP = "tool-running"
#: The STEP event an agent sends when it handed a steering message to the running agent.
STEER_STEP = "steer"
#: The routing stage of a message that steers the thread's running run (dispatch records it).
STEER_STAGE = "steer"
#: The routing stage of `/queue <task>`: a new run after the current one, never a steer.
QUEUE_STAGE = "queue"
#: What a thread is told when its running run's agent cannot take messages mid-run.
CANNOT_STEER = ("Run {run} cannot take messages while it runs (`{agent}` steers only with agent.mode: warm), "
                "so this becomes the next run in this thread. `/stop` ends the current one.")
#: The steps that wait for a person (`bot.approvals`): shown open until answered.
APPROVAL_ASKED, APPROVAL_ANSWERED = "approval-asked", "approval-answered"
#: States a run can still leave.
ACTIVE = (RunState.QUEUED, RunState.RUNNING)
#: `/agent --with NAME <task>` (or `!agent ...`): the agent picked for one run (agent.choosable).
AGENT_CHOICE = re.compile(r"^[/!]agent\s+--with(?:\s+(?P<name>\S+))?(?:\s+(?P<task>.+))?$", re.IGNORECASE | re.DOTALL)


def requested_agent(text: str) -> tuple[str, str] | None:
    """Return (agent name, task) of a `/agent --with NAME <task>` line ("" where missing); None for other lines."""
    match = AGENT_CHOICE.match(text.strip())
    if match is None:
        return None
    return (match.group("name") or "").lower(), (match.group("task") or "").strip()


def agent_for(engine: Engine, conversation: Conversation, requested: str | None = None) -> str:
    """Return the agent that runs a request here: the `--with` pick, else the channel's, else agent.name.

    Raise `UserFacingError` (one sentence, shown as is) when the pick is not in agent.choosable or
    not installed.
    """
    manifest = engine.manifest
    channel = manifest.channels.get(f"{conversation.where.platform}:{conversation.where.channel}")
    default = (channel.agent if channel else None) or manifest.agent.name
    if not requested or requested == default:
        return default
    if requested not in manifest.agent.choosable:
        allowed = ", ".join(f"`{name}`" for name in manifest.agent.choosable) or "none"
        raise UserFacingError(f"`/agent --with {requested}` is not allowed here: the agents you may pick "
                              f"(agent.choosable in manifest.yml) are {allowed}.")
    if requested not in engine.agents:
        raise UserFacingError(f"`/agent --with {requested}` cannot run: no agent named `{requested}` is installed.")
    return requested


def start_run(engine: Engine, message_id: int, message: Message, conversation: Conversation) -> AgentRun:
    """Create the run for a request (once), show its status message, enqueue it; return the run.

    The run's agent is the one `agent_for` picks: the request line's `--with` choice, the
    channel's agent, or agent.name.
    """
    with engine.db.reading() as session:
        request_line = Messages(session).get(message_id)[0].text
    choice = requested_agent(request_line)
    agent = agent_for(engine, conversation, choice[0] if choice else None)
    with engine.db.session() as session:
        run, created = Runs(session).create(conversation.id, agent, message.text,
                                            requested_by=message.user_name or message.user_id,
                                            request_message_id=message_id)
    if not created and run.status_message_id:
        return run  # a redelivered request: its run exists and is shown already
    status = status_of(engine, run.id)
    status_message_id = engine.say(conversation, Reply(render_status(status), status=status, partial=True),
                                   reply_to=message_id)
    job_id = f"run-{run.id}"
    with engine.db.session() as session:
        Runs(session).set(run.id, status_message_id=status_message_id, job_id=job_id)
    engine.queue.enqueue(RUN_JOB, run.id, job_id=job_id, timeout=engine.agent_job_timeout,
                         affinity=affinity(conversation.id))
    return replace(run, status_message_id=status_message_id)


def affinity(conversation_id: int) -> str:
    """Return what a conversation's run jobs share: a worker whose warm server holds its session takes them
    when it can (`bot.queue.RedisQueue`)."""
    return f"conversation:{conversation_id}"


def claim(engine: Engine, run_id: int) -> bool:
    """Return True if the run moved to running: its conversation's oldest queued run, none running."""
    with engine.db.session() as session:
        runs = Runs(session)
        run = runs.get(run_id)
        if run.state != RunState.QUEUED:
            return False
        active = runs.active(run.conversation_id)
        if any(other.state == RunState.RUNNING for other in active) or active[0].id != run_id:
            return False
        return runs.transition(run_id, RunState.RUNNING, allowed_from=(RunState.QUEUED,),
                               worker=worker_name(), heartbeat_at=utcnow())


def kick_next(engine: Engine, conversation_id: int, *, requeue: bool = False) -> None:
    """Enqueue the conversation's next queued run and show the others their new place.

    With `requeue` (the reaper, for a run whose job was lost) the job id is fixed, so
    repeated passes enqueue it once. Otherwise a run whose status message is not posted yet is
    left to `start_run`, which is between its steps and enqueues it once the message is shown:
    a job started before would have no message to edit.
    """
    with engine.db.reading() as session:
        active = Runs(session).active(conversation_id)
    if not active or active[0].state != RunState.QUEUED:
        return
    first = active[0]
    if requeue:
        job_id = f"run-{first.id}-requeue"
    elif not first.status_message_id:
        return
    else:
        refresh_queue(engine, conversation_id)
        job_id = f"run-{first.id}-after-{int(time.time() * 1000)}"
    engine.queue.enqueue(RUN_JOB, first.id, job_id=job_id, timeout=engine.agent_job_timeout,
                         affinity=affinity(conversation_id))


def retry_lost(engine: Engine, run: AgentRun, why: str) -> bool:
    """Queue a run lost with its worker once more (its second attempt) and say so; False if it may not be.

    It was its conversation's running run, so it is now the oldest queued one: next in line.
    The job id names the attempt, so it is enqueued once however many reapers see the run.
    """
    with engine.db.session() as session:
        if not Runs(session).requeue_lost(run.id):
            return False
        conversation = Conversations(session).get(run.conversation_id)
    if run.status_message_id:
        status = status_of(engine, run.id)
        status.note = f"{why} Trying again (attempt 2)."
        engine.edit(conversation, run.status_message_id, Reply(render_status(status), status=status, partial=True))
    engine.queue.enqueue(RUN_JOB, run.id, job_id=f"run-{run.id}-attempt-2", timeout=engine.agent_job_timeout,
                         affinity=affinity(run.conversation_id))
    return True


def refresh_queue(engine: Engine, conversation_id: int) -> None:
    """Edit the status of every queued run of the conversation to show its place in line."""
    with engine.db.reading() as session:
        active = Runs(session).active(conversation_id)
        conversation = Conversations(session).get(conversation_id)
    for run in active:
        if run.state == RunState.QUEUED and run.status_message_id:
            status = status_of(engine, run.id)
            engine.edit(conversation, run.status_message_id, Reply(render_status(status), status=status, partial=True))


@dataclass
class RunAnswer:
    """A run's answer, stored in the transaction that ends the run and posted after it.

    Until it is posted its row holds a placeholder external id naming the posting process
    (`bot.engine.unposted_marker`): a worker that dies between the two leaves it to the reaper
    (`workers.reaper.post_unposted_replies`), so a run that is done always has its answer.
    """

    reply: Reply  # redacted
    reply_to: int | None
    marker: str
    #: The stored row's id, once `finish_run` stored it.
    message_id: int | None = None


def finish_run(engine: Engine, run_id: int, state: RunState, *, error: str = "", note: str = "",
               allowed_from: tuple[RunState, ...] = ACTIVE, status: RunStatus | None = None,
               show: Callable[[Reply], None] | None = None, answer: RunAnswer | None = None,
               **columns: Any) -> bool:
    """Move an unfinished run to a final state and show it; return False if it had ended already.

    :param status: the status as the caller followed it (the executing job's live one);
        default: rebuilt from the stored run and its events.
    :param show: how the final status lands (the job's live message); default: one final
        edit of the run's status message.
    :param answer: the run's answer, stored (unposted) with the move, and only if the run moved.
    :param columns: more columns stored with the move (tokens, session id, who cancelled).
    """
    assert state.is_final, state
    with engine.db.session() as session:
        runs = Runs(session)
        moved = runs.transition(run_id, state, allowed_from=allowed_from, error=error, **columns)
        run = runs.get(run_id)
        conversation = Conversations(session).get(run.conversation_id)
        if moved and answer is not None:  # the inbox writes it, on this transaction's connection
            answer.message_id = engine.inbox.add_message(
                session.connection().connection.cursor(), conversation.id, "assistant", answer.reply.text,
                external_id=answer.marker, reply_to_id=answer.reply_to)
    if not moved:
        return False
    final = replace(status, checklist=list(status.checklist)) if status else status_of(engine, run_id)
    final.state = state
    final.note = note or (f"Failed: {error}" if state == RunState.FAILED and error else "")
    reply = Reply(render_status(final), status=final)
    if show is not None:
        show(reply)
    elif run.status_message_id:
        engine.edit(conversation, run.status_message_id, reply, final=True)
    with engine.db.session() as session:
        Runs(session).set(run_id, final_shown=True)
    return True


def show_final(engine: Engine, run: AgentRun) -> None:
    """Edit a finished run's status message to its stored end: the edit a process that ended the
    run and died (or gave up waiting for the platform) did not make (`workers.reaper`)."""
    with engine.db.reading() as session:
        conversation = Conversations(session).get(run.conversation_id)
    if not run.status_message_id:
        return
    final = status_of(engine, run.id, note=f"Failed: {run.error}" if run.state == RunState.FAILED and run.error else "")
    engine.edit(conversation, run.status_message_id, Reply(render_status(final), status=final), final=True)


def cancel(engine: Engine, run: AgentRun, who: str, *, notice_id: str = "") -> RunState | None:
    """Cancel a run for `who`; return the state it was stopped in, or None if it had ended.

    A queued run is cancelled at once and its status says so. A running one is marked
    (who cancelled is stored on the run) and its process is signalled, wherever it runs; the
    job executing it ends it as cancelled.
    """
    if run.state == RunState.QUEUED and finish_run(engine, run.id, RunState.CANCELLED,
                                                   allowed_from=(RunState.QUEUED,), cancelled_by=who,
                                                   note=f"Cancelled by {who} before it started."):
        return RunState.QUEUED
    with engine.db.session() as session:
        runs = Runs(session)
        if runs.get(run.id).state != RunState.RUNNING:
            return None
        runs.set(run.id, cancelled_by=who)
    # The job edits the notice ("Stopping run N…") to how the run ended.
    engine.signals.send(run.id, Signal(CANCEL, who=who, data={"notice_id": notice_id} if notice_id else {}))
    return RunState.RUNNING


def cancel_requested(engine: Engine, run_id: int) -> bool:
    """Return True if someone asked to cancel the run."""
    with engine.db.reading() as session:
        return bool(Runs(session).get(run_id).cancelled_by)


def cancelled_by(engine: Engine, run_id: int) -> str:
    """Return who cancelled the run, or "" if nobody did."""
    with engine.db.reading() as session:
        return Runs(session).get(run_id).cancelled_by


def fold_event(status: RunStatus, event: RunEvent) -> None:
    """Apply one agent event to a run's status: a checklist line, the latest words, tokens, an error.

    A step in progress (`RUNNING_STEP`, from agents that report tools as they start) shows as an
    open line until its outcome replaces it.
    """
    if event.kind == EventKind.STEP and event.name in (RUNNING_STEP, APPROVAL_ASKED):
        _add_step(status, (event.text, None))
    elif event.kind == EventKind.STEP and event.name == STEER_STEP:
        _add_step(status, (f"↪ steering: {' '.join(event.text.split())}", True))
    elif event.kind == EventKind.STEP and event.name == APPROVAL_ANSWERED:
        if (event.text, None) in status.checklist:
            status.checklist.remove((event.text, None))
        _add_step(status, (f"{event.text} ({event.status})", event.status != "reject"))
    elif event.kind == EventKind.TOOL:
        if (event.text, None) in status.checklist:
            status.checklist.remove((event.text, None))
        _add_step(status, (event.text, event.status == "completed"))
    elif event.kind == EventKind.TEXT and event.text.strip():
        status.latest_text = event.text
    elif event.kind == EventKind.TOKENS:
        status.tokens_in += event.tokens_in
        status.tokens_out += event.tokens_out
        status.cost += event.cost
    elif event.kind == EventKind.ERROR:
        status.note = f"Error: {event.text}"


def _add_step(status: RunStatus, step: tuple[str, bool | None]) -> None:
    status.checklist.append(step)  # type: ignore[arg-type]
    overflow = len(status.checklist) - constants.STATUS_CHECKLIST_ITEMS
    if overflow > 0:
        status.hidden_items += overflow
        del status.checklist[:overflow]


def status_of(engine: Engine, run_id: int, note: str = "") -> RunStatus:
    """Return the status of a run as stored, with its place in its conversation's line."""
    with engine.db.reading() as session:
        runs = Runs(session)
        run = runs.get(run_id)
        active = [other.id for other in runs.active(run.conversation_id)]
        checklist = [(e.text, e.status == "completed") for e in runs.events(run_id) if e.kind == EventKind.TOOL]
    elapsed = (as_utc(run.finished_at or utcnow()) - as_utc(run.started_at)).total_seconds() if run.started_at else 0.0
    hidden = max(0, len(checklist) - constants.STATUS_CHECKLIST_ITEMS)
    return RunStatus(
        run_id=run_id,
        state=run.state,
        agent=run.agent,
        requested_by=run.requested_by,
        elapsed_s=elapsed,
        queue_position=active.index(run_id) if run_id in active else 0,
        checklist=checklist[hidden:],
        hidden_items=hidden,
        tokens_in=run.tokens_in,
        tokens_out=run.tokens_out,
        cost=run.cost,
        note=note or (f"Failed: {run.error}" if run.state == RunState.FAILED and run.error else ""),
        web_url=web_links.run_url(engine, run),
    )


def worker_name() -> str:
    """Return this process's name in the runs table: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"
