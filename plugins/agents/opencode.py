"""The built-in coding agent: the pinned opencode CLI, run headless in the workspace.

Each run gets an explicit permission config laid over the user's own (OPENCODE_CONFIG or the
manifest's model), its own state directories, stdin from /dev/null, an environment with none
of the bot's secrets, and a process tree that cancel and timeouts end completely.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.config import Manifest, Settings, resolve_agent_binary
from bot.engine import Engine
from bot.errors import UserFacingError
from bot.hookspecs import hookimpl
from bot.types import AgentOutcome, AgentTask, EventKind, HealthCheck, RunEvent
from plugins.agents.opencode_events import parse_line
from plugins.agents.opencode_model import connection_problem, ping, read_user_config, resolve_endpoint
from plugins.agents.process_tree import kill_tree, spawn

log = logging.getLogger(__name__)

NAME = "opencode"
#: Environment variables the agent always gets (everything else must be listed in the
#: manifest's agent.pass_env): enough to run tools, nothing that names a bot secret.
BASE_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME", "SHELL")
#: Stops opencode from downloading the model catalogue and merging an opencode.json found
#: above the workspace (PLATFORM_FACTS: ~10 s lost offline otherwise).
OFFLINE_ENV = {"OPENCODE_DISABLE_MODELS_FETCH": "1", "OPENCODE_DISABLE_PROJECT_CONFIG": "1",
               "OPENCODE_DISABLE_AUTOUPDATE": "1", "TERM": "dumb", "NO_COLOR": "1"}
XDG_DIRS = ("XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")
NO_MODEL = ("No model is configured for the coding agent: set OPENCODE_CONFIG to an opencode config with a "
            "provider, or agent.model in manifest.yml (listing its API key's variable in agent.pass_env). "
            "See the README, Agent runs.")
NOT_INSTALLED = ("The opencode binary is not installed: run `npm install` in the bot's checkout "
                 "(it pins opencode-ai), or set OPENCODE_BIN.")
#: Seconds the agent binary gets to print its version (a cold node start on 2 busy cores).
VERSION_TIMEOUT_S = 20
#: Lines of opencode's stderr kept for the error message of a failed run.
STDERR_TAIL_LINES = 20


def permission_rules(allow_webfetch: bool) -> dict[str, Any]:
    """Return the permission block laid over every run: nothing outside the workspace."""
    return {
        "edit": "allow",
        "bash": {"*": "allow"},
        "external_directory": "deny",
        "webfetch": "allow" if allow_webfetch else "deny",
        # A question would wait for a person; `run` mode has none to ask.
        "question": "deny",
    }


class OpencodeAgent:
    """Runs `opencode run --format json` and turns its event lines into `RunEvent`s."""

    name = NAME

    def __init__(self, binary: Path, user_config: Path | None) -> None:
        self.binary = binary
        self.user_config = user_config

    def run(self, task: AgentTask, on_event: Callable[[RunEvent], None], cancel: threading.Event) -> AgentOutcome:
        env = self._environment(task)
        argv = [str(self.binary), "run", "--format", "json", "--dir", str(task.workspace)]
        if task.session_id:
            argv += ["--session", task.session_id]
        if task.model:
            argv += ["--model", task.model]
        # After "--", the prompt cannot be read as options (a user typing "--auto"). It goes as
        # one argument: opencode's argument parser turns number-like words into numbers and
        # then fails on them, so the prompt cannot be split into words (opencode wraps a
        # single argument with spaces in quotes, which the model reads fine). stdin stays
        # /dev/null.
        argv += ["--", task.prompt]
        process = spawn(argv, env=env, cwd=task.workspace)
        stderr_tail: list[str] = []
        stderr_reader = threading.Thread(target=_tail, args=(process.stderr, stderr_tail), daemon=True)
        stderr_reader.start()
        ended = threading.Event()
        stop_reason: list[str] = []
        watchdog = threading.Thread(target=self._watch, args=(process, cancel, task.timeout_s, ended, stop_reason),
                                    daemon=True)
        watchdog.start()
        session_id, texts, errors = task.session_id, [], []
        assert process.stdout is not None
        for raw in process.stdout:
            event, event_session = parse_line(raw.decode("utf-8", errors="replace"))
            session_id = event_session or session_id
            if event is None:
                continue
            if event.kind == EventKind.TEXT and event.text.strip():
                texts.append(event.text)
            if event.kind == EventKind.ERROR:
                errors.append(event.text)
            on_event(event)
        code = process.wait()
        ended.set()
        watchdog.join()
        stderr_reader.join(2)
        process.stdout.close()
        if process.stderr is not None:
            process.stderr.close()
        final = texts[-1].strip() if texts else ""
        if stop_reason:
            return AgentOutcome(session_id, final, cancelled=stop_reason[0] == "cancel",
                                timed_out=stop_reason[0] == "timeout",
                                error=f"timed out after {task.timeout_s:g} s" if stop_reason[0] == "timeout" else "")
        if code != 0 or errors:
            detail = errors[-1] if errors else _last_line(stderr_tail) or f"opencode exited with status {code}"
            return AgentOutcome(session_id, final, error=detail)
        return AgentOutcome(session_id, final)

    @staticmethod
    def _watch(process: subprocess.Popen[bytes], cancel: threading.Event, timeout_s: float, ended: threading.Event,
               stop_reason: list[str]) -> None:
        deadline = time.monotonic() + timeout_s
        while not ended.is_set():
            if cancel.wait(min(0.2, max(0.0, deadline - time.monotonic()))):
                stop_reason.append("cancel")
            elif time.monotonic() >= deadline:
                stop_reason.append("timeout")
            else:
                continue
            kill_tree(process)
            return

    def _environment(self, task: AgentTask) -> dict[str, str]:
        env = {name: os.environ[name] for name in BASE_ENV if name in os.environ}
        env.update(OFFLINE_ENV)
        home = task.state_dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        env["HOME"] = str(home)
        for name in XDG_DIRS:
            path = task.state_dir / name.lower()
            path.mkdir(parents=True, exist_ok=True)
            env[name] = str(path)
        env["OPENCODE_CONFIG"] = str(self._write_config(task))
        env.update(task.env)
        return env

    def _write_config(self, task: AgentTask) -> Path:
        config = read_user_config(str(self.user_config) if self.user_config else None)
        config.update({"permission": permission_rules(task.allow_webfetch), "autoupdate": False, "share": "disabled"})
        path = task.state_dir / "opencode.json"
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        return path


def _tail(stream: Any, lines: list[str]) -> None:
    for raw in stream:
        lines.append(raw.decode("utf-8", errors="replace").rstrip())
        del lines[:-STDERR_TAIL_LINES]


def _last_line(lines: list[str]) -> str:
    meaningful = [line for line in lines if line.strip()]
    return meaningful[-1][:300] if meaningful else ""


@hookimpl
def register_agents() -> list[Any]:
    return [_agent]


class _LazyAgent:
    """Resolves the binary when a run starts, so a missing binary is a chat message, not a crash."""

    name = NAME
    engine: Engine | None = None

    def run(self, task: AgentTask, on_event: Callable[[RunEvent], None], cancel: threading.Event) -> AgentOutcome:
        assert self.engine is not None
        settings, manifest = self.engine.settings, self.engine.manifest
        binary = resolve_agent_binary(manifest, settings)
        if binary is None:
            raise UserFacingError(NOT_INSTALLED)
        user_config = settings.get("OPENCODE_CONFIG")
        endpoint = resolve_endpoint(task.model, read_user_config(user_config), {**settings.env, **task.env})
        if endpoint is None:
            # The agent has state dirs of its own, so no opencode config of the user's applies;
            # without a model opencode retries an unreachable default for over a minute.
            raise UserFacingError(NO_MODEL)
        problem = connection_problem(endpoint)
        if problem:
            raise UserFacingError(f"The agent's model {endpoint.name} cannot be reached at {endpoint.base_url} "
                                  f"({problem}). Check its address in OPENCODE_CONFIG, or `python -m bot doctor`.")
        return OpencodeAgent(binary, Path(user_config) if user_config else None).run(task, on_event, cancel)


_agent = _LazyAgent()


@hookimpl
def startup(engine: Engine) -> None:
    _agent.engine = engine


@hookimpl
def check_health(manifest: Manifest, settings: Settings, offline: bool) -> list[HealthCheck]:
    if manifest.agent.name != NAME:
        return []
    return [_binary_check(manifest, settings), *_model_checks(manifest, settings, offline)]


def _binary_check(manifest: Manifest, settings: Settings) -> HealthCheck:
    binary = resolve_agent_binary(manifest, settings)
    # With no model configured the agent is not in use yet: its absence is a warning only.
    wanted = bool(manifest.agent.model or settings.get("OPENCODE_CONFIG"))
    if binary is None:
        return HealthCheck("agent", False if wanted else None, "the opencode binary was not found",
                           "run `npm install` in the checkout (pins opencode-ai), or set OPENCODE_BIN")
    try:
        result = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                                timeout=VERSION_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return HealthCheck("agent", False, f"{binary} does not run: {type(exc).__name__}", "reinstall with `npm install`")
    version = (result.stdout or result.stderr).strip().splitlines()[:1]
    return HealthCheck("agent", result.returncode == 0, f"{binary} {version[0] if version else ''}".strip(),
                       "" if result.returncode == 0 else "reinstall with `npm install`")


def _model_checks(manifest: Manifest, settings: Settings, offline: bool) -> list[HealthCheck]:
    try:
        config = read_user_config(settings.get("OPENCODE_CONFIG"))
    except UserFacingError as exc:
        return [HealthCheck("model", False, str(exc), "point OPENCODE_CONFIG at a valid opencode.json")]
    passed = {name: value for name in manifest.agent.pass_env if (value := settings.get(name))}
    endpoint = resolve_endpoint(manifest.agent.model, config, passed)
    if endpoint is None:
        return [HealthCheck("model", None, "no model is configured for the coding agent: /agent cannot run",
                            "set agent.model in manifest.yml or OPENCODE_CONFIG (README: Giving the agent a model)")]
    if offline:
        return [HealthCheck("model", None, f"{endpoint.name}: not called (--offline)")]
    if endpoint.api is None:
        return [HealthCheck("model", None, f"{endpoint.name}: cannot tell how to call this provider; not checked")]
    if not endpoint.api_key and endpoint.api == "anthropic":
        variable = "ANTHROPIC_API_KEY"
        return [HealthCheck("model", False, f"{endpoint.name}: no API key reaches the agent",
                            f"export {variable} and list it in agent.pass_env")]
    problem = connection_problem(endpoint)
    if problem:
        return [HealthCheck("model", False, f"{endpoint.name} at {endpoint.base_url}: {problem}",
                            "check the provider's baseURL in OPENCODE_CONFIG, or run `doctor --offline` offline")]
    answered, detail = ping(endpoint)
    return [HealthCheck("model", answered, detail, "" if answered else "check the model name and its API key")]
