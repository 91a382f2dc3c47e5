"""Executing an agent run: the RQ job that prepares the workspace, runs the agent and concludes.

    run_agent(run_id) ─► bot.runs.claim ─► workspace ─► the agent (a `register_agents` plugin)
        ─► events redacted, stored, folded into the status (bot.runs.fold_event), shown by edits
        ─► changed files attached ─► bot.runs.finish_run ─► reply ─► bot.runs.kick_next

Every state change of a run is decided in `bot.runs`; this module only executes. A second job
for the same run loses the claim; a run whose worker died is found by `workers.reaper`.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

from bot import constants, logs, metrics, runs
from bot import engine as engine_module
from bot.approvals import ApprovalMessages
from bot.db.repositories import Conversations, Runs
from bot.engine import HANDLE_MESSAGE_JOB, Engine, unposted_marker
from bot.errors import UserFacingError
from bot.platforms import never_passed_to_agent
from bot.progress import LiveMessage, render_status
from bot.run_events import RunBroadcast, feed_for
from bot.runs import start_run
from bot.signals import STEER, RunInbox, Signal
from bot.types import (
    Agent,
    AgentOutcome,
    AgentRun,
    AgentTask,
    Conversation,
    EventKind,
    Message,
    Reply,
    Route,
    RunEvent,
    RunState,
    RunStatus,
    SteerableAgent,
    utcnow,
)
from workers import capture
from workers import workspace as workspaces
from workers.capture import ANSWER, answer_file

#: `workers.jobs` starts runs through this module; the lifecycle itself is `bot.runs`.
__all__ = ["TASK_TEMPLATE", "run_agent", "start_run"]

log = logging.getLogger(__name__)

TASK_TEMPLATE = """{request}

Context from this conversation (most relevant first; it may be incomplete):
{context}

Constraints: work only inside the current directory, which is this conversation's git
workspace. Do not ask questions; make reasonable choices and say what you chose. End with a
short summary of what you changed and how you checked it."""


@metrics.observed_job
def run_agent(run_id: int) -> None:
    """Run one agent run to its end, unless it is not its conversation's turn yet."""
    engine = engine_module.current()
    logs.bind(run_id=run_id)
    if not runs.claim(engine, run_id):
        return
    try:
        _execute(engine, run_id)
    finally:
        with engine.db.reading() as session:
            conversation_id = Runs(session).get(run_id).conversation_id
        runs.kick_next(engine, conversation_id)


def _execute(engine: Engine, run_id: int) -> None:
    # Listening from the claim on: a steering message or a cancel sent while the workspace is
    # prepared waits in the inbox; steering messages the agent never took become the next run.
    with engine.signals.listen(run_id) as inbox:
        run, conversation, progress, outcome = _execute_listening(engine, run_id, inbox)
        _queue_unsteered(engine, run, conversation, inbox.pending())
    _close_notices(engine, run, conversation, outcome, progress)


def _execute_listening(engine: Engine, run_id: int,
                       inbox: RunInbox) -> tuple[AgentRun, Conversation, _Progress, AgentOutcome]:
    with engine.db.reading() as session:
        run = Runs(session).get(run_id)
        conversation = Conversations(session).get(run.conversation_id)
        request_message_id = run.request_message_id
    logs.bind(conversation_id=conversation.id)
    live = LiveMessage.in_thread(engine, conversation, message_id=run.status_message_id)
    progress = _Progress(engine, run, live, conversation)
    progress.inbox = inbox
    progress.show()
    heartbeat = threading.Thread(target=contextvars.copy_context().run, args=(progress.beat,),
                                 name=f"run-{run_id}-heartbeat", daemon=True)
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
    return run, conversation, progress, outcome


def _close_notices(engine: Engine, run: AgentRun, conversation: Conversation, outcome: AgentOutcome,
                   progress: _Progress) -> None:
    """Edit the messages that wait on the run to its outcome: open approval requests, the stop notice."""
    state = runs.status_of(engine, run.id).state
    progress.approvals.close(f"run {run.id} {state.value}")
    cancel = progress.inbox.cancel_signal if progress.inbox is not None else None
    notice_id = cancel.data.get("notice_id") if cancel is not None else None
    if notice_id:
        who = runs.cancelled_by(engine, run.id) or cancel.who or "someone"
        text = (f"⏹️ Stopped run {run.id} (cancelled by {who})." if state == RunState.CANCELLED
                else f"Run {run.id} ended before it could be stopped ({state.value}).")
        engine.edit(conversation, str(notice_id), text, final=True)


def _run_agent(engine: Engine, run: AgentRun, conversation: Conversation, progress: _Progress) -> AgentOutcome:
    agent = engine.agents.get(run.agent)
    if agent is None:
        raise UserFacingError(f"No agent named `{run.agent}` is installed (agent.name in manifest.yml).")
    data_dir = engine.settings.data_dir
    channel_key = f"{conversation.where.platform}:{conversation.where.channel}"
    channel = engine.manifest.channels.get(channel_key)
    workspace = _workspace(data_dir / "workspaces" / str(conversation.id), channel.repo if channel else None, agent)
    progress.workspace = workspace
    message = Message(where=conversation.where, text=run.prompt, user_id=_requester(engine, run),
                      user_name=run.requested_by)
    memories = engine.recall(message, conversation, engine.manifest.llm.context_budget_tokens)
    context = "\n".join(f"- {item.text}" for item in memories) or "- (nothing earlier)"
    agent_settings = engine.manifest.agent
    session_id, fork_session = _session_to_continue(engine, conversation, run.agent)
    task = AgentTask(
        run_id=run.id,
        workspace=workspace,
        prompt=TASK_TEMPLATE.format(request=run.prompt, context=context),
        state_dir=data_dir / "agent-state" / str(conversation.id),
        timeout_s=agent_settings.timeout_seconds,
        session_id=session_id,
        model=agent_settings.model,
        allow_webfetch=agent_settings.allow_webfetch,
        env=_passed_env(agent_settings.pass_env, engine.settings.env),
        fork_session=fork_session,
        ask=agent_settings.ask_rules(),
        approval_timeout_s=agent_settings.approval_timeout_seconds,
    )
    inbox = progress.inbox
    assert inbox is not None  # `_execute` listens for the whole run
    if runs.cancel_requested(engine, run.id):
        inbox.cancel.set()
    if isinstance(agent, SteerableAgent) and agent.steerable:
        return agent.run_with_inbox(task, progress.on_event, inbox)
    return agent.run(task, progress.on_event, inbox.cancel)


def _workspace(workspace: Path, repo: str | None, agent: Agent) -> Path:
    """Return the conversation's workspace, made if new: a clone of the channel's `repo`, else empty.

    A new empty one is, when the agent has one, a workspace it already opened
    (`SteerableAgent.prepared_workspace`): `workspace` becomes a link to it, and the real path is
    returned, the one the agent knows.
    """
    if not repo and not os.path.lexists(workspace) and isinstance(agent, SteerableAgent) \
            and (prepared := agent.prepared_workspace()) is not None:
        workspace.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # made meanwhile by another run of the conversation
            workspace.symlink_to(prepared, target_is_directory=True)
    workspaces.prepare(workspace, repo)
    return workspace.resolve()


def _queue_unsteered(engine: Engine, run: AgentRun, conversation: Conversation, left: list[Signal]) -> None:
    """Queue each steering message the run did not hand to its agent as a new run, and say so."""
    for signal in left:
        message_id = signal.data.get("message_id") if signal.kind == STEER else None
        if not message_id:
            continue
        engine.say(conversation, f"Run {run.id} could not take that message ({_short(signal.text)}); it becomes "
                   "the next run in this thread.", reply_to=message_id)
        engine.queue.enqueue(HANDLE_MESSAGE_JOB, message_id, Route.AGENT.value, signal.text, False,
                             job_id=f"message-{message_id}-unsteered", timeout=engine.agent_job_timeout)


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return f"“{text}”" if len(text) <= limit else f"“{text[: limit - 1]}…”"


def _requester(engine: Engine, run: AgentRun) -> str:
    """Return the user id of who asked for the run ("" when unknown): their own memories apply."""
    with engine.db.reading() as session:
        return Runs(session).requester_id(run.id)


def _conclude(engine: Engine, run: AgentRun, conversation: Conversation, outcome: AgentOutcome,
              progress: _Progress, request_message_id: int | None) -> None:
    attached = _attach_changes(engine, run, conversation, progress.workspace)
    if outcome.session_id:
        with engine.db.session() as session:
            Conversations(session).set_agent_session(conversation.id, outcome.session_id)
        engine.inbox.forget(conversation.where)
        agent = engine.agents.get(run.agent)
        if isinstance(agent, SteerableAgent) and agent.sessions_in_worker:
            engine.queue.stick(runs.affinity(conversation.id))
    if outcome.cancelled:
        state, note = RunState.CANCELLED, f"Cancelled by {runs.cancelled_by(engine, run.id) or 'someone'}."
    elif outcome.error:
        state, note = RunState.FAILED, f"Failed: {outcome.error}"
    else:
        state, note = RunState.DONE, f"{attached} file(s) attached." if attached else ""
    status = progress.snapshot()
    answer = _answer(engine, run, outcome, request_message_id) if state == RunState.DONE else None
    # A long answer is attached whole: stored before the run ends, so a worker that dies before
    # uploading it leaves it to the reaper with the answer's post (`workers.reaper`).
    whole = outcome.final_text.encode() if answer is not None and _attaches(outcome) else None
    whole_answer = capture.store(engine, run, conversation, answer_file(run.id), whole, kind=ANSWER) if whole else None
    finished = runs.finish_run(engine, run.id, state, error=outcome.error, note=note, allowed_from=(RunState.RUNNING,),
                               status=status, show=progress.finish, session_id=outcome.session_id, answer=answer,
                               tokens_in=status.tokens_in, tokens_out=status.tokens_out, cost=status.cost)
    metrics.agent_tokens(run.agent, status.tokens_in, status.tokens_out)
    if not finished:  # ended meanwhile (the reaper thought its worker dead): show what is stored
        stored = runs.status_of(engine, run.id)
        progress.finish(Reply(render_status(stored), status=stored))
    if state == RunState.FAILED or progress.status.hidden_items:
        _attach_log(engine, run, conversation, f"{state.value}: {outcome.error}" if outcome.error else state.value)
    if answer is not None and answer.message_id is not None:
        engine.post_stored(conversation, answer.reply, answer.message_id, answer.marker)
        if whole_answer is not None and whole is not None:
            capture.upload(engine, conversation, whole_answer, whole, comment=f"Run {run.id} answer")
        engine.remember(message=Message(where=conversation.where, text=run.prompt, user_id=_requester(engine, run),
                                        user_name=run.requested_by), conversation=conversation,
                        reply=outcome.final_text or answer.reply.text)


def _answer(engine: Engine, run: AgentRun, outcome: AgentOutcome, reply_to: int | None) -> runs.RunAnswer:
    """Return the answer a done run posts: the agent's final text, or its head when the whole is attached."""
    answer = outcome.final_text or "Done (the agent gave no summary)."
    if _attaches(outcome):
        head = answer[: constants.REPLY_ATTACH_THRESHOLD // 4].rsplit("\n", 1)[0]
        answer = f"{head}\n\n(The full answer is attached: {answer_file(run.id)})"
    return runs.RunAnswer(engine.redacted(answer), reply_to, unposted_marker())


def _attaches(outcome: AgentOutcome) -> bool:
    """Return True when the answer is too long for a reply: the reply is its head, the whole is attached."""
    return len(outcome.final_text) > constants.REPLY_ATTACH_THRESHOLD


def _attach_changes(engine: Engine, run: AgentRun, conversation: Conversation, workspace: Path | None) -> int:
    """Commit the run's changes, store and upload them, tell the thread what did not go up."""
    if workspace is None or not (workspace / ".git").is_dir():
        return 0
    try:
        changes = workspaces.commit_run(workspace, run.id, run.prompt,
                                        max_file_bytes=engine.manifest.resources.max_file_mb * 2**20)
    except UserFacingError as exc:
        log.warning("run %s: %s", run.id, exc)
        return 0
    captured = capture.capture_changes(engine, run, conversation, changes)
    if captured.notices:
        engine.say(conversation, f"Run {run.id} made files that were not uploaded:\n"
                   + "\n".join(f"- {notice}" for notice in captured.notices))
    return captured.uploaded


def _attach_log(engine: Engine, run: AgentRun, conversation: Conversation, outcome: str) -> None:
    """Attach every event of the run and how it ended: the status shows only the last steps."""
    with engine.db.reading() as session:
        events = Runs(session).events(run.id)
    lines = [f"# Run {run.id} ({run.agent})", "", f"Request: {run.prompt}", "", f"Outcome: {outcome}", ""]
    for event in events:
        stamp = event.at.strftime("%H:%M:%S")
        detail = event.text if event.kind != EventKind.TOKENS else f"{event.tokens_in} in / {event.tokens_out} out"
        lines.append(f"- {stamp} {event.kind.value} {event.name} {event.status} {detail}".rstrip())
    capture.publish(engine, run, conversation, f"run-{run.id}-log.md", "\n".join(lines).encode(), kind="log",
                    comment=f"Run {run.id} log")


class _Progress:
    """A run's status as events arrive: redacted, stored, reported to plugins, shown by edits."""

    def __init__(self, engine: Engine, run: AgentRun, live: LiveMessage, conversation: Conversation) -> None:
        self.engine = engine
        self.run = run
        self.live = live
        self.status = runs.status_of(engine, run.id)
        self.status.state = RunState.RUNNING
        self.started = time.monotonic()
        self.seq = 0
        self.workspace: Path | None = None
        #: The run's live views (the web page) see what the status message sees.
        self.broadcast = RunBroadcast(feed_for(engine.settings), run.id)
        #: Approval requests the agent asked, as messages in the thread.
        self.approvals = ApprovalMessages(engine, conversation)
        #: What reaches the running run from outside (set while the agent runs).
        self.inbox: RunInbox | None = None
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    def on_event(self, event: RunEvent) -> None:
        """Store one agent event (redacted), fold it into the status and show it."""
        # The agent may print a secret it found (a token in a repo): nothing unredacted is stored.
        redact = self.engine.redact
        event = replace(event, name=redact(event.name), text=redact(event.text), raw=redact.json(event.raw))
        with self._lock:
            self.seq += 1
            seq = self.seq
            runs.fold_event(self.status, event)
        with self.engine.db.session() as session:
            Runs(session).add_event(self.run.id, seq, event)
        self.broadcast.event(seq, event)
        self.engine.hook.report_progress(run=self.run, event=event, engine=self.engine)
        self.approvals.observe(event)
        self.show()

    def snapshot(self) -> RunStatus:
        """Return a copy of the status as of now, elapsed time included."""
        with self._lock:
            self.status.elapsed_s = time.monotonic() - self.started
            return replace(self.status, checklist=list(self.status.checklist))

    def show(self) -> None:
        """Show the status as of now; the live message coalesces the edits."""
        snapshot = self.snapshot()
        self.live.update(Reply(render_status(snapshot), status=snapshot, partial=True))
        self.broadcast.update(snapshot)

    def beat(self) -> None:
        """Refresh the heartbeat (and the elapsed time shown) until the run stops."""
        while not self._stopped.wait(constants.RUN_HEARTBEAT_S):
            with self.engine.db.session() as session:
                Runs(session).set(self.run.id, heartbeat_at=utcnow())
            self.show()

    def stop(self) -> None:
        """Stop the heartbeat."""
        self._stopped.set()

    def finish(self, reply: Reply) -> None:
        """Land the final status, after any edit still pending (in the thread and on live views)."""
        self.live.finish(reply)
        if reply.status is not None:
            self.broadcast.finish(reply.status)


def _session_to_continue(engine: Engine, conversation: Conversation, agent: str) -> tuple[str | None, bool]:
    """Return the session the run continues, and whether to fork it (a fork's first run).

    `/fork` left the parent's session on the fork's conversation, copied into its agent state;
    once a run in the fork has a session of its own, that one is continued.
    """
    own = _session_of(engine, conversation, agent)
    if own or conversation.forked_from_id is None or not conversation.agent_session_id:
        return own, False
    with engine.db.reading() as session:
        earlier = Runs(session).in_conversation(conversation.id)
    if any(run.session_id for run in earlier):  # another agent's session: none of this one's to fork
        return None, False
    return conversation.agent_session_id, True


def _session_of(engine: Engine, conversation: Conversation, agent: str) -> str | None:
    """Return the session this agent's latest run in the conversation left (another agent's is no use to it)."""
    with engine.db.reading() as session:
        earlier = Runs(session).in_conversation(conversation.id)
    return next((run.session_id for run in earlier if run.agent == agent and run.session_id), None)


def _passed_env(names: list[str], environment: dict[str, str]) -> dict[str, str]:
    """Return the listed variables the agent may see: never a platform's, the database's or Redis's.

    (A model key, ANTHROPIC_API_KEY included, may be passed on purpose: the agent needs one.)
    """
    never = never_passed_to_agent()
    allowed = [name for name in names if not name.startswith(never)]
    return {name: environment[name] for name in allowed if environment.get(name)}

