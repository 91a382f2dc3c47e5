"""Agent runs: one RQ job per run, one run at a time per conversation, one live status message.

    start_run (in the message's job) ─► run row (queued) + status message ─► enqueue run_agent
    run_agent(run_id) ─► claim (oldest queued, nothing running) ─► workspace ─► agent events
        ─► run events stored + status edited ─► changed files attached ─► final state + reply
        ─► the next queued run of the conversation is enqueued

Every step is idempotent: a second delivery of the same request finds its run; a second job
for the same run loses the claim; a run whose worker died is found by `workers.reaper`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

from bot import constants
from bot import engine as engine_module
from bot.db.repositories import Conversations, Resources, Runs
from bot.engine import Engine
from bot.errors import UserFacingError
from bot.progress import LiveMessage, render_status
from bot.types import (
    AgentOutcome,
    AgentRun,
    AgentTask,
    Attachment,
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
from workers import workspace as workspaces

log = logging.getLogger(__name__)

RUN_JOB = "workers.agent_run.run_agent"
ACTIVE = (RunState.QUEUED, RunState.RUNNING)

TASK_TEMPLATE = """{request}

Context from this conversation (most relevant first; it may be incomplete):
{context}

Constraints: work only inside the current directory, which is this conversation's git
workspace. Do not ask questions; make reasonable choices and say what you chose. End with a
short summary of what you changed and how you checked it."""


def start_run(engine: Engine, message_id: int, message: Message, conversation: Conversation) -> AgentRun:
    """Create the run for a request (once), show its status message, and enqueue it."""
    with engine.db.session() as session:
        run, created = Runs(session).create(conversation.id, engine.manifest.agent.name, message.text,
                                            requested_by=message.user_name or message.user_id,
                                            request_message_id=message_id)
    if not created and run.status_message_id:
        return run  # a redelivered request: its run exists and is shown already
    status = _status_of(engine, run.id)
    status_message_id = engine.say(conversation, Reply(render_status(status), status=status, partial=True),
                                   reply_to=message_id)
    job_id = f"run-{run.id}"
    with engine.db.session() as session:
        Runs(session).set(run.id, status_message_id=status_message_id, job_id=job_id)
    engine.queue.enqueue(RUN_JOB, run.id, job_id=job_id, timeout=engine.agent_job_timeout)
    return replace(run, status_message_id=status_message_id)


def run_agent(run_id: int) -> None:
    """Run one agent run to its end, unless it is not its conversation's turn yet."""
    engine = engine_module.current()
    if not claim(engine, run_id):
        return
    try:
        _execute(engine, run_id)
    finally:
        with engine.db.reading() as session:
            conversation_id = Runs(session).get(run_id).conversation_id
        kick_next(engine, conversation_id)


def claim(engine: Engine, run_id: int) -> bool:
    """Move the run to running if it is its conversation's oldest queued run and none runs."""
    with engine.db.session() as session:
        runs = Runs(session)
        run = runs.get(run_id)
        if run.state != RunState.QUEUED:
            return False
        active = runs.active(run.conversation_id)
        if any(other.state == RunState.RUNNING for other in active) or active[0].id != run_id:
            return False
        return runs.transition(run_id, RunState.RUNNING, allowed_from=(RunState.QUEUED,),
                               worker=_worker_name(), heartbeat_at=utcnow())


def kick_next(engine: Engine, conversation_id: int, *, requeue: bool = False) -> None:
    """Enqueue the conversation's next queued run and show the others their new place.

    With `requeue` (the reaper, for a run whose job was lost) the job id is fixed, so
    repeated passes enqueue it once.
    """
    with engine.db.reading() as session:
        active = Runs(session).active(conversation_id)
    if not active or active[0].state != RunState.QUEUED:
        return
    first = active[0]
    if requeue:
        job_id = f"run-{first.id}-requeue"
    else:
        refresh_queue(engine, conversation_id)
        job_id = f"run-{first.id}-after-{int(time.time() * 1000)}"
    engine.queue.enqueue(RUN_JOB, first.id, job_id=job_id, timeout=engine.agent_job_timeout)


def refresh_queue(engine: Engine, conversation_id: int) -> None:
    """Edit the status of every queued run of the conversation to show its place in line."""
    with engine.db.reading() as session:
        active = Runs(session).active(conversation_id)
        conversation = Conversations(session).get(conversation_id)
    for run in active:
        if run.state == RunState.QUEUED and run.status_message_id:
            status = _status_of(engine, run.id)
            engine.edit(conversation, run.status_message_id, Reply(render_status(status), status=status, partial=True))


def finish_run(engine: Engine, run_id: int, state: RunState, *, error: str = "", note: str = "") -> bool:
    """Move an unfinished run to a final state and show it; return False if it had ended."""
    with engine.db.session() as session:
        moved = Runs(session).transition(run_id, state, allowed_from=ACTIVE, error=error)
        run = Runs(session).get(run_id)
        conversation = Conversations(session).get(run.conversation_id)
    if moved and run.status_message_id:
        status = _status_of(engine, run_id, note=note)
        engine.edit(conversation, run.status_message_id, Reply(render_status(status), status=status), final=True)
    return moved


def _execute(engine: Engine, run_id: int) -> None:
    with engine.db.reading() as session:
        run = Runs(session).get(run_id)
        conversation = Conversations(session).get(run.conversation_id)
        request_message_id = Runs(session).row(run_id).request_message_id
    live = LiveMessage.in_thread(engine, conversation, message_id=run.status_message_id)
    progress = _Progress(engine, run, live)
    progress.show()
    heartbeat = threading.Thread(target=progress.beat, name=f"run-{run_id}-heartbeat", daemon=True)
    heartbeat.start()
    try:
        outcome = _run_agent(engine, run, conversation, progress)
    except UserFacingError as exc:
        outcome = AgentOutcome(run.session_id, "", error=str(exc))
    except Exception as exc:  # boundary: one run
        log.exception("agent run %s failed", run_id)
        outcome = AgentOutcome(run.session_id, "", error=f"unexpected failure ({type(exc).__name__}); see the bot's log")
    finally:
        progress.stop()
        heartbeat.join()
    _conclude(engine, run, conversation, outcome, progress, request_message_id)


def _run_agent(engine: Engine, run: AgentRun, conversation: Conversation, progress: _Progress) -> AgentOutcome:
    agents = {agent.name: agent for registered in engine.hook.register_agents() for agent in registered or ()}
    agent = agents.get(run.agent)
    if agent is None:
        raise UserFacingError(f"No agent named `{run.agent}` is installed (agent.name in manifest.yml).")
    data_dir = engine.settings.data_dir
    workspace = data_dir / "workspaces" / str(conversation.id)
    channel_key = f"{conversation.where.platform}:{conversation.where.channel}"
    channel = engine.manifest.channels.get(channel_key)
    workspaces.prepare(workspace, channel.repo if channel else None)
    progress.workspace = workspace
    message = Message(where=conversation.where, text=run.prompt, user_id="", user_name=run.requested_by)
    memories = engine.recall(message, conversation, engine.manifest.llm.context_budget_tokens)
    context = "\n".join(f"- {item.text}" for item in memories) or "- (nothing earlier)"
    agent_settings = engine.manifest.agent
    task = AgentTask(
        run_id=run.id,
        workspace=workspace,
        prompt=TASK_TEMPLATE.format(request=run.prompt, context=context),
        state_dir=data_dir / "agent-state" / str(conversation.id),
        timeout_s=agent_settings.timeout_seconds,
        session_id=conversation.agent_session_id,
        model=agent_settings.model,
        allow_webfetch=agent_settings.allow_webfetch,
        env=_passed_env(agent_settings.pass_env, engine.settings.env),
    )
    with engine.cancels.listen(run.id) as cancel:
        if _cancel_requested(engine, run.id):
            cancel.set()
        return agent.run(task, progress.on_event, cancel)


def _conclude(engine: Engine, run: AgentRun, conversation: Conversation, outcome: AgentOutcome,
              progress: _Progress, request_message_id: int | None) -> None:
    attached = _attach_changes(engine, run, conversation, progress.workspace)
    with engine.db.session() as session:
        if outcome.session_id:
            Conversations(session).set_agent_session(conversation.id, outcome.session_id)
        row = Runs(session).row(run.id)
        cancelled_by = row.cancelled_by
    if outcome.session_id:
        engine.inbox.forget(conversation.where)
    if outcome.cancelled:
        state, note = RunState.CANCELLED, f"Cancelled by {cancelled_by or 'someone'}."
    elif outcome.error:
        state, note = RunState.FAILED, f"Failed: {outcome.error}"
    else:
        state, note = RunState.DONE, f"{attached} file(s) attached." if attached else ""
    with engine.db.session() as session:
        Runs(session).transition(run.id, state, allowed_from=(RunState.RUNNING,), error=outcome.error,
                                 session_id=outcome.session_id, tokens_in=progress.status.tokens_in,
                                 tokens_out=progress.status.tokens_out, cost=progress.status.cost)
    progress.status.state, progress.status.note = state, note
    progress.finish()
    if state == RunState.FAILED or progress.status.hidden_items:
        _attach_log(engine, run, conversation, f"{state.value}: {outcome.error}" if outcome.error else state.value)
    if state == RunState.DONE:
        answer = outcome.final_text or "Done (the agent gave no summary)."
        _post_answer(engine, run, conversation, answer, request_message_id)
        engine.remember(message=Message(where=conversation.where, text=run.prompt, user_id="",
                                             user_name=run.requested_by), conversation=conversation, reply=answer)


def _post_answer(engine: Engine, run: AgentRun, conversation: Conversation, answer: str,
                 reply_to: int | None) -> None:
    if len(answer) <= constants.REPLY_ATTACH_THRESHOLD:
        engine.say(conversation, answer, reply_to=reply_to)
        return
    head = answer[: constants.REPLY_ATTACH_THRESHOLD // 4].rsplit("\n", 1)[0]
    engine.say(conversation, f"{head}\n\n(The full answer is attached: run-{run.id}-answer.md)", reply_to=reply_to)
    engine.upload(conversation, Attachment(f"run-{run.id}-answer.md", answer.encode(), title=f"Run {run.id} answer"))


def _attach_changes(engine: Engine, run: AgentRun, conversation: Conversation, workspace: Path | None) -> int:
    if workspace is None or not (workspace / ".git").is_dir():
        return 0
    try:
        changes = workspaces.commit_run(workspace, run.id, run.prompt)
    except UserFacingError as exc:
        log.warning("run %s: %s", run.id, exc)
        return 0
    attached = 0
    for file in changes.files[: constants.RUN_MAX_ATTACHMENTS]:
        file_id = None
        if file.size <= constants.RUN_MAX_ATTACHMENT_BYTES:
            try:
                file_id = engine.upload(conversation, Attachment(Path(file.path).name, file.data, title=file.path,
                                                                 comment=f"Run {run.id}: {file.path}"))
                attached += 1
            except Exception:  # boundary: one upload; the file stays indexed and in the workspace
                log.exception("run %s: uploading %s failed", run.id, file.path)
        with engine.db.session() as session:
            Resources(session).add(conversation.id, file.path, run_id=run.id, size=file.size, sha256=file.sha256,
                                   platform_file_id=file_id)
    if changes.refused:
        lines = [f"- `{refused.path}`: {refused.reason}, not uploaded" for refused in changes.refused]
        engine.say(conversation, f"Run {run.id} made files that were not uploaded:\n" + "\n".join(lines))
    return attached


def _attach_log(engine: Engine, run: AgentRun, conversation: Conversation, outcome: str) -> None:
    """Attach every event of the run and how it ended: the status shows only the last steps."""
    with engine.db.reading() as session:
        events = Runs(session).events(run.id)
    lines = [f"# Run {run.id} ({run.agent})", "", f"Request: {run.prompt}", "", f"Outcome: {outcome}", ""]
    for event in events:
        stamp = event.created_at.strftime("%H:%M:%S")
        detail = event.text if event.kind != EventKind.TOKENS.value else f"{event.tokens_in} in / {event.tokens_out} out"
        lines.append(f"- {stamp} {event.kind} {event.name} {event.status} {detail}".rstrip())
    try:
        engine.upload(conversation, Attachment(f"run-{run.id}-log.md", "\n".join(lines).encode(),
                                               title=f"Run {run.id} log"))
    except Exception:  # boundary: one upload; the events stay in the database
        log.exception("run %s: uploading its log failed", run.id)


class _Progress:
    """A run's status as events arrive: stored, reported to plugins, shown by edits."""

    def __init__(self, engine: Engine, run: AgentRun, live: LiveMessage) -> None:
        self.engine = engine
        self.run = run
        self.live = live
        self.status = _status_of(engine, run.id)
        self.status.state = RunState.RUNNING
        self.started = time.monotonic()
        self.seq = 0
        self.workspace: Path | None = None
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    def on_event(self, event: RunEvent) -> None:
        # The agent may print a secret it found (a token in a repo): nothing unredacted is stored.
        redact = self.engine.redact
        event = replace(event, name=redact(event.name), text=redact(event.text), raw=redact.json(event.raw))
        with self._lock:
            self.seq += 1
            seq = self.seq
            self._apply(event)
        with self.engine.db.session() as session:
            Runs(session).add_event(self.run.id, seq, event)
        self.engine.hook.report_progress(run=self.run, event=event)
        self.show()

    def _apply(self, event: RunEvent) -> None:
        status = self.status
        if event.kind == EventKind.TOOL:
            status.checklist.append((event.text, event.status == "completed"))
            overflow = len(status.checklist) - constants.STATUS_CHECKLIST_ITEMS
            if overflow > 0:
                status.hidden_items += overflow
                del status.checklist[:overflow]
        elif event.kind == EventKind.TEXT and event.text.strip():
            status.latest_text = event.text
        elif event.kind == EventKind.TOKENS:
            status.tokens_in += event.tokens_in
            status.tokens_out += event.tokens_out
            status.cost += event.cost
        elif event.kind == EventKind.ERROR:
            status.note = f"Error: {event.text}"

    def show(self) -> None:
        with self._lock:
            self.status.elapsed_s = time.monotonic() - self.started
            text = render_status(self.status)
            snapshot = replace(self.status, checklist=list(self.status.checklist))
        self.live.update(Reply(text, status=snapshot, partial=True))

    def beat(self) -> None:
        """Refresh the heartbeat (and the elapsed time shown) until the run stops."""
        while not self._stopped.wait(constants.RUN_HEARTBEAT_S):
            with self.engine.db.session() as session:
                Runs(session).set(self.run.id, heartbeat_at=utcnow())
            self.show()

    def stop(self) -> None:
        self._stopped.set()

    def finish(self) -> None:
        self.status.elapsed_s = time.monotonic() - self.started
        self.live.finish(Reply(render_status(self.status), status=self.status))


def _status_of(engine: Engine, run_id: int, note: str = "") -> RunStatus:
    """Return the status of a run as stored, with its place in its conversation's line."""
    with engine.db.reading() as session:
        runs = Runs(session)
        run = runs.get(run_id)
        row = runs.row(run_id)
        active = [other.id for other in runs.active(run.conversation_id)]
        checklist = [(e.text, e.status == "completed") for e in runs.events(run_id) if e.kind == EventKind.TOOL.value]
    elapsed = (as_utc(row.finished_at or utcnow()) - as_utc(row.started_at)).total_seconds() if row.started_at else 0.0
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
        tokens_in=row.tokens_in,
        tokens_out=row.tokens_out,
        cost=row.cost,
        note=note or (f"Failed: {run.error}" if run.state == RunState.FAILED and run.error else ""),
    )


def _cancel_requested(engine: Engine, run_id: int) -> bool:
    with engine.db.reading() as session:
        return bool(Runs(session).row(run_id).cancelled_by)


#: Variables the agent never gets, even when listed in agent.pass_env: the platforms' tokens
#: and where the bot's data lives. (A model key, ANTHROPIC_API_KEY included, may be passed on
#: purpose: the agent needs one to reach its model.)
NEVER_PASSED = ("SLACK_", "DISCORD_", "DATABASE_URL", "REDIS_URL")


def _passed_env(names: list[str], environment: dict[str, str]) -> dict[str, str]:
    allowed = [name for name in names if not name.startswith(NEVER_PASSED)]
    return {name: environment[name] for name in allowed if environment.get(name)}


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
