"""Running a command-line coding agent: isolated, watched, and ended with its whole tree.

Any agent plugin whose agent is a program that prints one event per line uses this:

    agent plugin ─► CliInvocation(argv, env, parse_line) ─► run_cli(invocation, task, on_event, cancel)
        ─► spawn (scrubbed environment, own HOME/XDG dirs, stdin /dev/null, PID namespace as
           root, PR_SET_PDEATHSIG) ─► each stdout line ─► parse_line ─► on_event
        ─► watchdog: cancel or timeout ends the whole process tree ─► AgentOutcome

The plugin keeps only what is its agent's own: its command line, its config, its event
parser. See `bot.types.Agent` for the protocol an agent implements.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from bot.types import AgentOutcome, AgentTask, EventKind, RunEvent
from plugins.agents.process_tree import kill_tree, spawn

#: Environment variables every agent gets (everything else must be listed in the manifest's
#: agent.pass_env): enough to run tools, nothing that names a bot secret.
BASE_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME", "SHELL")
#: The per-conversation state directories an agent gets under `AgentTask.state_dir`
#: (XDG Base Directory spec; opencode keeps its sessions there, PLATFORM_FACTS).
XDG_DIRS = ("XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")
#: Lines of the agent's stderr kept for the error message of a failed run.
STDERR_TAIL_LINES = 20
#: Characters of the agent's last stderr line shown as a failed run's error.
ERROR_LINE_CHARS = 300
#: Seconds between the watchdog's looks at cancel and the deadline: cancel lands within this.
WATCH_INTERVAL_S = 0.2
#: Seconds to wait for the stderr reader after the agent exited (its pipe closes with it).
STDERR_JOIN_S = 2.0

#: Parses one line of the agent's stdout: the event it holds (None for noise) and the agent
#: session id it names (None if it names none).
LineParser = Callable[[str], "tuple[RunEvent | None, str | None]"]


@dataclass(frozen=True)
class CliInvocation:
    """One start of a command-line agent: its command, its own variables, how to read its lines."""

    #: Names the agent in error messages ("opencode exited with status 1").
    name: str
    argv: list[str]
    parse_line: LineParser
    #: Variables of the agent's own (offline switches, its config path), laid over the
    #: scrubbed environment; `AgentTask.env` (the manifest's pass_env) is laid over these.
    env: Mapping[str, str] = field(default_factory=dict)


def json_object(line: str) -> dict[str, Any] | None:
    """Return the JSON object one output line holds, or None for anything else (noise, a banner)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def agent_environment(task: AgentTask, extra: Mapping[str, str] = ()) -> dict[str, str]:
    """Return the agent's environment: BASE_ENV, its own HOME and XDG dirs, `extra`, then `task.env`.

    None of the bot's other variables (platform tokens, database and Redis URLs) are in it.
    """
    env = {name: os.environ[name] for name in BASE_ENV if name in os.environ}
    home = task.state_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    for name in XDG_DIRS:
        path = task.state_dir / name.lower()
        path.mkdir(parents=True, exist_ok=True)
        env[name] = str(path)
    env.update(extra)
    env.update(task.env)
    return env


def run_cli(invocation: CliInvocation, task: AgentTask, on_event: Callable[[RunEvent], None],
            cancel: threading.Event) -> AgentOutcome:
    """Run the agent in the workspace until it exits, is cancelled or times out; return how it ended.

    Every parsed event goes to `on_event` in order. The final text is the last non-empty TEXT
    event; an ERROR event or a non-zero exit makes the run fail with the last error (or the
    last line of stderr).
    """
    env = agent_environment(task, invocation.env)
    process = spawn(invocation.argv, env=env, cwd=task.workspace)
    stderr_tail: list[str] = []
    stderr_reader = threading.Thread(target=_tail, args=(process.stderr, stderr_tail), daemon=True)
    stderr_reader.start()
    watchdog = _Watchdog(process, cancel, task.timeout_s)
    session_id, texts, errors = task.session_id, [], []
    assert process.stdout is not None
    try:
        for raw in process.stdout:
            event, event_session = invocation.parse_line(raw.decode("utf-8", errors="replace"))
            session_id = event_session or session_id
            if event is None:
                continue
            if event.kind == EventKind.TEXT and event.text.strip():
                texts.append(event.text)
            if event.kind == EventKind.ERROR:
                errors.append(event.text)
            on_event(event)
    finally:
        if process.poll() is None and not watchdog.stopped:
            kill_tree(process)  # on_event raised: leave nothing running
        code = process.wait()
        watchdog.join()
        stderr_reader.join(STDERR_JOIN_S)
        process.stdout.close()
        if process.stderr is not None:
            process.stderr.close()
    final = texts[-1].strip() if texts else ""
    if watchdog.reason == "timeout":
        return AgentOutcome(session_id, final, timed_out=True, error=f"timed out after {task.timeout_s:g} s")
    if watchdog.reason == "cancel":
        return AgentOutcome(session_id, final, cancelled=True)
    if code != 0 or errors:
        detail = errors[-1] if errors else _last_line(stderr_tail) or f"{invocation.name} exited with status {code}"
        return AgentOutcome(session_id, final, error=detail)
    return AgentOutcome(session_id, final)


class _Watchdog:
    """Ends the agent's process tree when the run is cancelled or its time is up."""

    def __init__(self, process: subprocess.Popen[bytes], cancel: threading.Event, timeout_s: float) -> None:
        self._process = process
        self._cancel = cancel
        self._deadline = time.monotonic() + timeout_s
        self._ended = threading.Event()
        #: "cancel" or "timeout" once the watchdog stopped the agent; "" otherwise.
        self.reason = ""
        self._thread = threading.Thread(target=self._watch, name="agent-watchdog", daemon=True)
        self._thread.start()

    @property
    def stopped(self) -> bool:
        """Return True if the watchdog ended the agent."""
        return bool(self.reason)

    def join(self) -> None:
        """Stop watching (the agent has exited) and wait for the watchdog thread."""
        self._ended.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._ended.is_set():
            if self._cancel.wait(min(WATCH_INTERVAL_S, max(0.0, self._deadline - time.monotonic()))):
                self.reason = "cancel"
            elif time.monotonic() >= self._deadline:
                self.reason = "timeout"
            else:
                continue
            kill_tree(self._process)
            return


def _tail(stream: IO[bytes], lines: list[str]) -> None:
    for raw in stream:
        lines.append(raw.decode("utf-8", errors="replace").rstrip())
        del lines[:-STDERR_TAIL_LINES]


def _last_line(lines: list[str]) -> str:
    meaningful = [line for line in lines if line.strip()]
    return meaningful[-1][:ERROR_LINE_CHARS] if meaningful else ""
