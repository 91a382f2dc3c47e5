"""One agent run on the warm opencode server, over HTTP; the cold `opencode run` when it cannot be.

    session (continue it, fork it: POST /session/:id/fork, or POST /session) ─► subscribe to its events ─► POST prompt_async
        ─► server events ─► ServerEvents ─► on_event ─► idle ─► reconcile from
           GET /session/:id/message (prompt_async answers 204 even on failure, #32010)
    a steering message (inbox) ─► POST prompt_async on the busy session: opencode's loop reads
        it as the next user message of its very next model request
    a tool call matching agent.ask ─► permission.asked ─► an approval request (STEP) ─► the
        answer (inbox) or agent.approval_timeout_seconds ─► POST /permission/:id/reply
    cancel or timeout ─► POST /session/:id/abort (its bash tools die with it)
    server unreachable, or gone mid-run ─► the cold path finishes the run

A session lives in the database of the server that made it (the worker's state, not the
conversation's): a cold fallback for such a session runs on that state directory, so it
continues the same history. A fork's first run brings the parent's session here like a
follow-up, forks it and prompts the fork (`opencode_sessions.fork_on_server`).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2 as httpx

from bot import approvals
from bot.approvals import ApprovalRequest
from bot.runs import STEER_STEP
from bot.signals import APPROVAL, STEER, RunInbox, Signal
from bot.types import AgentOutcome, AgentTask, EventKind, RunEvent
from plugins.agents.opencode_events import ServerEvents
from plugins.agents.opencode_server import SERVER_LOST, OpencodeServer, ServerUnavailable, directory_header
from plugins.agents.opencode_sessions import bring_session, fork_on_server, freshest_holder, with_fork_copy

if TYPE_CHECKING:
    from plugins.agents.opencode import OpencodeAgent

log = logging.getLogger(__name__)

#: Seconds between the run's looks at cancel, its deadline and the server's life.
POLL_S = 0.2
#: Seconds without an event after which the run asks the server how the session stands
#: (an idle event may be lost; a session may be stuck "busy", #35472).
RECONCILE_AFTER_S = 5.0
#: Silent reconciles with no answer to the prompt before the run fails (#32010: a failed
#: prompt_async still answers 204).
UNANSWERED_CHECKS = 6
#: Seconds an aborted session gets to say it is idle (abort took ~30 ms in the probe).
ABORT_WAIT_S = 3.0
#: opencode's database inside a state dir (XDG_DATA_HOME/opencode/opencode.db, 1.18).
DATABASE = Path("xdg_data_home") / "opencode" / "opencode.db"
#: What the cold path is told when it takes over a run whose prompt the server already had.
CONTINUE_PROMPT = ("The agent was restarted in the middle of the task above. Continue it from where it stopped "
                   "(check the workspace first), then end with the summary asked for.")


def session_rules(allow_webfetch: bool, ask: tuple[tuple[str, str], ...] = ()) -> list[dict[str, str]]:
    """Return the per-session permission rules: those `opencode run` adds itself, then agent.ask's.

    opencode takes the last matching rule, so the `ask` rules come last and win over the
    config's `allow`.
    """
    rules = [{"permission": name, "action": "deny", "pattern": "*"} for name in ("question", "plan_enter", "plan_exit")]
    if not allow_webfetch:
        rules.append({"permission": "webfetch", "action": "deny", "pattern": "*"})
    rules += [{"permission": tool, "action": "ask", "pattern": pattern} for tool, pattern in ask]
    return rules


class ServerLost(Exception):
    """The server went away during the run."""


class WarmRun:
    """Runs tasks on a warm server, falling back to the cold agent whenever it cannot."""

    def __init__(self, server: OpencodeServer, cold: OpencodeAgent, states: Path) -> None:
        self.server = server
        self.cold = cold
        #: $BOT_DATA_DIR/agent-state: where every worker's server keeps its sessions.
        self.states = states

    def run(self, task: AgentTask, on_event: Callable[[RunEvent], None], cancel: threading.Event,
            inbox: RunInbox | None = None) -> AgentOutcome:
        """Run the task on the warm server, or by the cold path when the server cannot; return how it ended.

        With an `inbox`, steering messages and approval answers reach the running session;
        those left when the run ends (the cold path cannot take them) stay in it.
        """
        try:
            self.server.ensure()
        except ServerUnavailable as exc:
            return self._cold(task, on_event, cancel, f"warm server unavailable: {exc}")
        started = time.monotonic()
        session_id = None
        state = _RunState()
        try:
            with self.server.client() as api:
                session_id = self._session(api, task)
                if session_id is None:
                    return self._cold(task, on_event, cancel, "session not known to this worker's server")
                return self._prompt(api, task, session_id, on_event, cancel, state, inbox)
        except (ServerLost, ServerUnavailable, httpx.TransportError) as exc:
            self.server.request_restart(f"a run lost it: {exc}")
            left = task.timeout_s - (time.monotonic() - started)
            taken = replace(task, timeout_s=max(1.0, left), session_id=session_id or task.session_id,
                            fork_session=task.fork_session and session_id is None,
                            prompt=CONTINUE_PROMPT if state.prompt_taken else task.prompt)
            return self._cold(taken, on_event, cancel, f"warm server lost mid-run: {exc}")

    def _session(self, api: httpx.Client, task: AgentTask) -> str | None:
        """Return the session to prompt: the task's (carried over to this server if need be), else a new one.

        A fork's first run prompts a fork of the task's session (the parent's), made here.
        None: the task's session could not be brought here, or not forked (the cold path takes it).
        """
        headers = directory_header(task.workspace)
        if task.session_id:
            here = bring_session(api, headers, task.session_id, task.workspace, self.server.spec.state_dir, self.states)
            if not here:
                return None
            if task.fork_session:
                forked = fork_on_server(api, headers, task.session_id, task.workspace, self.server.spec.state_dir)
                if forked is None:
                    return None
                session_id = forked
            else:
                session_id = task.session_id
            # A follow-up gets today's rules (agent.ask may have changed since the session began).
            answer = api.patch(f"/session/{session_id}", headers=headers,
                               json={"permission": session_rules(task.allow_webfetch, task.ask)})
            if answer.status_code >= 400:
                log.warning("run %s: the session's permission rules were not updated: %s", task.run_id, answer.text)
            return session_id
        answer = api.post("/session", headers=headers,
                          json={"title": f"Run {task.run_id}",
                                "permission": session_rules(task.allow_webfetch, task.ask)})
        answer.raise_for_status()
        return str(answer.json()["id"])

    def _prompt(self, api: httpx.Client, task: AgentTask, session_id: str, on_event: Callable[[RunEvent], None],
                cancel: threading.Event, state: _RunState, inbox: RunInbox | None) -> AgentOutcome:
        headers = directory_header(task.workspace)
        before = len(self._messages(api, session_id, headers)) if task.session_id else 0
        subscription = self.server.subscribe(str(task.workspace), session_id)
        self.server.ledger.add(started=1, active=1)
        try:
            body: dict[str, Any] = {"parts": [{"type": "text", "text": task.prompt}]}
            if task.model and "/" in task.model:
                provider, model = task.model.split("/", 1)
                body["model"] = {"providerID": provider, "modelID": model}
            answer = api.post(f"/session/{session_id}/prompt_async", headers=headers, json=body)
            answer.raise_for_status()
            state.prompt_taken = True
            talk = _Talk(api, task, session_id, on_event, inbox)
            return self._follow(api, task, session_id, subscription.events, on_event, cancel, before, talk)
        finally:
            self.server.unsubscribe(subscription)
            self.server.ledger.add(active=-1)

    def _follow(self, api: httpx.Client, task: AgentTask, session_id: str, events: queue.Queue[dict[str, Any]],
                on_event: Callable[[RunEvent], None], cancel: threading.Event, before: int,
                talk: _Talk) -> AgentOutcome:
        """Relay the session's events until it is idle with its answer complete; return how it ended."""
        headers = directory_header(task.workspace)
        translator = ServerEvents(approval_timeout_s=task.approval_timeout_s)
        deadline = time.monotonic() + task.timeout_s
        reason, aborted_at, last_event, unanswered = "", 0.0, time.monotonic(), 0
        errors: list[str] = []
        while True:
            if not reason and cancel.is_set():
                reason, aborted_at = "cancel", self._abort(api, session_id, headers)
            elif not reason and time.monotonic() >= deadline:
                reason, aborted_at = "timeout", self._abort(api, session_id, headers)
            if reason and time.monotonic() - aborted_at > ABORT_WAIT_S:
                break
            if not reason:
                talk.take_signals()
            try:
                payload = events.get(timeout=POLL_S)
            except queue.Empty:
                if not self.server.alive():
                    raise ServerLost("the server process is gone") from None
                if time.monotonic() - last_event < RECONCILE_AFTER_S:
                    continue
                last_event = time.monotonic()
                ended = self._ended(api, session_id, headers, before)
                if ended is None and not self._busy(api, session_id, headers):
                    unanswered += 1
                    if unanswered >= UNANSWERED_CHECKS:
                        return AgentOutcome(session_id, "", error="opencode did not take the prompt (no answer)")
                if ended is None:
                    continue
                translator.idle = True
            else:
                if payload is SERVER_LOST:
                    raise ServerLost("its event stream broke")
                last_event = time.monotonic()
                for event in translator.translate(payload):
                    if event.kind == EventKind.ERROR:
                        errors.append(event.text)
                    on_event(event)
                    talk.saw(event)
            if translator.idle and (reason or self._ended(api, session_id, headers, before,
                                                          stopped=bool(talk.rejected)) is not None):
                break
        messages = self._messages(api, session_id, headers)[before:]
        final = _final_text(messages)
        if not final and talk.rejected:  # opencode ends the turn when a person rejects a tool call
            final = f"The agent stopped: {talk.rejected[-1]} was rejected."
        if reason == "timeout":
            return AgentOutcome(session_id, final, timed_out=True, error=f"timed out after {task.timeout_s:g} s")
        if reason == "cancel":
            return AgentOutcome(session_id, final, cancelled=True)
        error = _message_error(messages) or (errors[-1] if errors else "")
        return AgentOutcome(session_id, final, error=error)

    def _ended(self, api: httpx.Client, session_id: str, headers: dict[str, str], before: int, *,
               stopped: bool = False) -> list[Any] | None:
        """Return the run's messages if its last assistant message is complete, else None.

        With `stopped` (a tool call was rejected: opencode ends the turn on it), a message that
        ended on tool calls counts as complete too.
        """
        messages = self._messages(api, session_id, headers)[before:]
        if not messages:
            return None
        info = messages[-1].get("info") or {}
        complete = info.get("role") == "assistant" and (info.get("time") or {}).get("completed")
        if complete and (info.get("finish") != "tool-calls" or info.get("error") or stopped):
            return messages
        return None

    def _busy(self, api: httpx.Client, session_id: str, headers: dict[str, str]) -> bool:
        answer = api.get("/session/status", headers=headers)
        status = (answer.json() or {}).get(session_id) if answer.status_code == 200 else None
        return bool(status) and status.get("type") != "idle"

    def _messages(self, api: httpx.Client, session_id: str, headers: dict[str, str]) -> list[dict[str, Any]]:
        answer = api.get(f"/session/{session_id}/message", headers=headers)
        answer.raise_for_status()
        return list(answer.json() or [])

    def _abort(self, api: httpx.Client, session_id: str, headers: dict[str, str]) -> float:
        """Abort the session (its running tools are killed); return when."""
        with contextlib.suppress(httpx.HTTPError):
            api.post(f"/session/{session_id}/abort", headers=headers)
        return time.monotonic()

    def _cold(self, task: AgentTask, on_event: Callable[[RunEvent], None], cancel: threading.Event,
              why: str) -> AgentOutcome:
        """Run the task by the cold path, in the state that holds its session; return how it ended."""
        log.warning("run %s on the cold path: %s", task.run_id, why)
        on_event(RunEvent(EventKind.STEP, name="cold-fallback", text=why))
        if task.fork_session:  # a fork's first run forks the parent's session, copied into the fork's state
            task = with_fork_copy(task, self.states)
        elif task.session_id:  # continue the session where its newest copy lives (a server's state, say)
            holder, _ = freshest_holder(self.states, task.session_id)
            if holder is not None and holder != task.state_dir:
                task = replace(task, state_dir=holder)
        return self.cold.run(task, on_event, cancel)


class _Talk:
    """What people say to one running session: steering messages and answers to its approval requests."""

    def __init__(self, api: httpx.Client, task: AgentTask, session_id: str, on_event: Callable[[RunEvent], None],
                 inbox: RunInbox | None) -> None:
        self.api = api
        self.task = task
        self.session_id = session_id
        self.on_event = on_event
        self.inbox = inbox
        self.headers = directory_header(task.workspace)
        #: Requests asked and not answered yet, with when they were asked.
        self.waiting: dict[str, tuple[ApprovalRequest, float]] = {}
        #: What was rejected (a person or the timeout), in order.
        self.rejected: list[str] = []

    def saw(self, event: RunEvent) -> None:
        """Note an approval request the session just asked."""
        if event.kind == EventKind.STEP and event.name == approvals.ASKED:
            request = ApprovalRequest.from_event(event)
            if request is not None:
                self.waiting.setdefault(request.id, (request, time.monotonic()))

    def take_signals(self) -> None:
        """Hand over what came in since the last look, and reject requests nobody answered in time."""
        for signal in self.inbox.pending() if self.inbox is not None else ():
            if signal.kind == STEER and signal.text.strip():
                self._steer(signal)
            elif signal.kind == APPROVAL:
                self._reply(signal.request_id, signal.reply, signal.who)
        now = time.monotonic()
        for request_id, (_, asked_at) in list(self.waiting.items()):
            if now - asked_at >= self.task.approval_timeout_s:
                self._reply(request_id, approvals.REJECT, "")

    def _steer(self, signal: Signal) -> None:
        # A prompt sent to a busy session becomes the next user message of its very next model
        # request (measured on 1.18.33); the v2 `POST /api/session/:id/prompt {delivery: "steer"}`
        # was admitted but never reached a session driven by prompt_async.
        body: dict[str, Any] = {"parts": [{"type": "text", "text": signal.text}]}
        answer = self.api.post(f"/session/{self.session_id}/prompt_async", headers=self.headers, json=body)
        if answer.status_code >= 400:
            log.warning("run %s: opencode refused a steering message: %s", self.task.run_id, answer.text)
            self.on_event(RunEvent(EventKind.ERROR, name="steer", text="the agent did not take a steering message"))
            return
        self.on_event(RunEvent(EventKind.STEP, name=STEER_STEP, text=signal.text, status="sent",
                               raw={"who": signal.who, "message_id": signal.data.get("message_id")}))

    def _reply(self, request_id: str, reply: str, who: str) -> None:
        waiting = self.waiting.pop(request_id, None)
        if waiting is None:
            log.info("run %s: an answer to %s, which is not waiting (answered or timed out)", self.task.run_id,
                     request_id)
            return
        reply = reply if reply in approvals.REPLIES else approvals.REJECT
        answer = self.api.post(f"/permission/{request_id}/reply", headers=self.headers, json={"reply": reply})
        if answer.status_code >= 400:
            log.warning("run %s: opencode refused the answer to %s: %s", self.task.run_id, request_id, answer.text)
        if reply == approvals.REJECT:
            self.rejected.append(waiting[0].label.removeprefix("approval: "))
        self.on_event(approvals.answered_event(waiting[0], reply, who))


class _RunState:
    """What a warm run did before it was interrupted: whether the server took the prompt."""

    prompt_taken = False


def _final_text(messages: list[dict[str, Any]]) -> str:
    texts = [str(part.get("text", "")) for message in messages if (message.get("info") or {}).get("role") == "assistant"
             for part in message.get("parts") or [] if part.get("type") == "text" and str(part.get("text", "")).strip()]
    return texts[-1].strip() if texts else ""


def _message_error(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        error = (message.get("info") or {}).get("error")
        if error:
            return str((error.get("data") or {}).get("message") or error.get("name") or "the agent reported an error")
    return ""
