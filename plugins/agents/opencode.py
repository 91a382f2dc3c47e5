"""The built-in coding agent: the pinned opencode CLI, run headless in the workspace.

What is opencode's own lives here: its command line, the config written per run (an explicit
permission block laid over the user's own, OPENCODE_CONFIG or the manifest's model), its
offline switches, its model preflight (`opencode_model`), its event parser
(`opencode_events`) and its `doctor` checks. Starting it isolated, watching it and ending its
whole process tree is the shared runner's job (`plugins.agents.cli_runner`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.config import Manifest, Settings, resolve_agent_binary
from bot.errors import UserFacingError
from bot.hookspecs import hookimpl
from bot.platforms import never_passed_to_agent
from bot.signals import RunInbox
from bot.types import Agent, AgentOutcome, AgentTask, EngineAPI, HealthCheck, RunEvent
from plugins.agents.cli_runner import CliInvocation, run_cli
from plugins.agents.opencode_events import parse_line
from plugins.agents.opencode_model import connection_problem, ping, read_user_config, resolve_endpoint
from plugins.agents.opencode_pool import PreparedWorkspaces, pool_of, provider_config
from plugins.agents.opencode_server import OpencodeServer, ServerSpec, server_for, stop_all
from plugins.agents.opencode_sessions import copy_session, freshest_holder, with_fork_copy
from plugins.agents.opencode_warm import WarmRun

log = logging.getLogger(__name__)

NAME = "opencode"
#: Stops opencode from downloading the model catalogue and merging an opencode.json found
#: above the workspace (PLATFORM_FACTS: ~10 s lost offline otherwise).
OFFLINE_ENV = {"OPENCODE_DISABLE_MODELS_FETCH": "1", "OPENCODE_DISABLE_PROJECT_CONFIG": "1",
               "OPENCODE_DISABLE_AUTOUPDATE": "1", "TERM": "dumb", "NO_COLOR": "1"}
NO_MODEL = ("No model is configured for the coding agent: set OPENCODE_CONFIG to an opencode config with a "
            "provider, or agent.model in manifest.yml (listing its API key's variable in agent.pass_env). "
            "See the README, Agent runs.")
NOT_INSTALLED = ("The opencode binary is not installed: run `npm install` in the bot's checkout "
                 "(it pins opencode-ai), or set OPENCODE_BIN.")
#: Seconds the agent binary gets to print its version (a cold node start on 2 busy cores).
VERSION_TIMEOUT_S = 20


def permission_rules(allow_webfetch: bool, ask: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    """Return the permission block laid over every run: nothing outside the workspace.

    `ask` (agent.ask) becomes `ask` rules: `opencode run` has nobody to ask and rejects a call
    that matches one by itself (PLATFORM_FACTS), so a cold run refuses what a warm one asks about.
    """
    rules: dict[str, Any] = {
        "edit": "allow",
        "bash": {"*": "allow"},
        "external_directory": "deny",
        "webfetch": "allow" if allow_webfetch else "deny",
        # A question would wait for a person; `run` mode has none to ask.
        "question": "deny",
    }
    for tool, pattern in ask:
        current = rules.get(tool, "allow")
        rules[tool] = {**(current if isinstance(current, dict) else {"*": current}), pattern: "ask"}
    return rules


class OpencodeAgent:
    """Runs `opencode run --format json` through the shared CLI runner."""

    name = NAME

    def __init__(self, binary: Path, user_config: Path | None) -> None:
        self.binary = binary
        self.user_config = user_config

    def run(self, task: AgentTask, on_event: Callable[[RunEvent], None], cancel: threading.Event) -> AgentOutcome:
        """Run the task with opencode; return how it ended (see `bot.types.Agent`)."""
        env = {**OFFLINE_ENV, "OPENCODE_CONFIG": str(self._write_config(task))}
        invocation = CliInvocation(name=NAME, argv=self.command(task), parse_line=parse_line, env=env)
        return run_cli(invocation, task, on_event, cancel)

    def command(self, task: AgentTask) -> list[str]:
        """Return opencode's command line for the task."""
        argv = [str(self.binary), "run", "--format", "json", "--dir", str(task.workspace)]
        if task.session_id:
            argv += ["--session", task.session_id, *(["--fork"] if task.fork_session else [])]
        if task.model:
            argv += ["--model", task.model]
        # After "--", the prompt cannot be read as options (a user typing "--auto"). It goes as
        # one argument: opencode's argument parser turns number-like words into numbers and
        # then fails on them, so the prompt cannot be split into words (opencode wraps a
        # single argument with spaces in quotes, which the model reads fine). stdin stays
        # /dev/null.
        return [*argv, "--", task.prompt]

    def _write_config(self, task: AgentTask) -> Path:
        task.state_dir.mkdir(parents=True, exist_ok=True)
        path = task.state_dir / "opencode.json"
        path.write_text(agent_config(self.user_config, task.allow_webfetch, task.ask), encoding="utf-8")
        return path


def agent_config(user_config: Path | None, allow_webfetch: bool, ask: tuple[tuple[str, str], ...] = (),
                 providers: dict[str, Any] | None = None) -> str:
    """Return the opencode config a run (or the warm server) gets: the user's, the bot's rules over it.

    `providers` are added to the user's (the warm server's workspace preparation, `opencode_pool`).
    """
    config = read_user_config(str(user_config) if user_config else None)
    config.update({"permission": permission_rules(allow_webfetch, ask), "autoupdate": False, "share": "disabled"})
    if providers:
        config["provider"] = {**(config.get("provider") or {}), **providers}
    return json.dumps(config, indent=2, sort_keys=True)


@hookimpl
def register_agents(engine: EngineAPI) -> list[Agent]:
    return [ConfiguredOpencode(engine.settings, engine.manifest)]


class ConfiguredOpencode:
    """opencode as the bot's settings configure it: binary and model checked when a run starts.

    A missing binary or an unreachable model is then a message in the thread, not a crash
    at start (and not opencode's minute of retries).
    """

    name = NAME

    def __init__(self, settings: Settings, manifest: Manifest) -> None:
        self.settings = settings
        self.manifest = manifest
        #: The worker process's pid (a forked RQ work-horse keeps it): it names the server's state.
        self._owner_pid = os.getpid()

    @property
    def steerable(self) -> bool:
        """Return True when runs take messages mid-run: only on the warm server (`bot.types.SteerableAgent`)."""
        return self.manifest.agent.mode == "warm"

    @property
    def sessions_in_worker(self) -> bool:
        """Return True when a session lives in its worker's server (warm): follow-ups go back there."""
        return self.manifest.agent.mode == "warm"

    def run_with_inbox(self, task: AgentTask, on_event: Callable[[RunEvent], None], inbox: RunInbox) -> AgentOutcome:
        """Run the task like `run`, handing steering messages and approval answers to the warm session."""
        return self.run(task, on_event, inbox.cancel, inbox)

    def run(self, task: AgentTask, on_event: Callable[[RunEvent], None], cancel: threading.Event,
            inbox: RunInbox | None = None) -> AgentOutcome:
        """Check the binary and the model, then run the task with opencode; return how it ended."""
        settings, manifest = self.settings, self.manifest
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
        cold = OpencodeAgent(binary, Path(user_config) if user_config else None)
        if manifest.agent.mode == "cold":
            return cold.run(with_fork_copy(task, self._server_states()), on_event, cancel)
        server = server_for(self._server_spec(binary, task.allow_webfetch, task.env))
        return WarmRun(server, cold, self._server_states()).run(task, on_event, cancel, inbox)

    def warm_up(self) -> str:
        """Start this worker's opencode server in the background (warm mode); return a line for the ready message.

        The worker takes jobs at once: a run that comes before the server is ready waits a
        little (`opencode_server.RUN_WAIT_S`), then takes the cold path.
        """
        server = self.server()
        if server is None:
            agent = self.manifest.agent
            in_use = {agent.name, *agent.choosable, *(c.agent for c in self.manifest.channels.values() if c.agent)}
            return f"opencode {agent.mode}" if NAME in in_use else ""
        server.between_runs = self._prepared().keep
        server.start()
        return f"opencode warm (server starting in {server.spec.state_dir})"

    def prepared_workspace(self) -> Path | None:
        """Return a new, empty workspace this worker's warm server has already opened, now the caller's (or None).

        Its first run skips the server's ~1 s of setting a new directory up (`opencode_pool`).
        """
        server = self.server()
        serving_pid = server.address.read()[0] if server is not None else 0  # 0 while (re)starting
        return self._prepared().take(serving_pid) if serving_pid else None

    def _prepared(self) -> PreparedWorkspaces:
        return pool_of(self.settings.data_dir, self._owner_pid)

    def server(self) -> OpencodeServer | None:
        """Return this process's warm server as the manifest configures it (None: cold mode, or opencode unused)."""
        agent = self.manifest.agent
        in_use = {agent.name, *agent.choosable, *(c.agent for c in self.manifest.channels.values() if c.agent)}
        binary = resolve_agent_binary(self.manifest, self.settings)
        if NAME not in in_use or agent.mode != "warm" or binary is None \
                or not (agent.model or self.settings.get("OPENCODE_CONFIG")):
            return None
        env = passed_env(agent.pass_env, self.settings.env)
        return server_for(self._server_spec(binary, agent.allow_webfetch, env))

    def shut_down(self) -> None:
        """Stop the opencode servers this process started, and remove the workspaces they prepared."""
        stop_all()
        self._prepared().discard()

    def _server_spec(self, binary: Path, allow_webfetch: bool, env: dict[str, str]) -> ServerSpec:
        agent = self.manifest.agent
        user_config = self.settings.get("OPENCODE_CONFIG")
        return ServerSpec(
            binary=binary,
            config=agent_config(Path(user_config) if user_config else None, allow_webfetch,
                                providers=provider_config()),
            env=tuple(sorted({**OFFLINE_ENV, **env}.items())),
            state_dir=self._server_states() / f"server-{self._owner_pid}",
            max_rss_mb=agent.server_max_rss_mb,
            max_runs=agent.server_max_runs,
        )

    def _server_states(self) -> Path:
        return self.settings.data_dir / "agent-state"

    def copy_session(self, session_id: str, parent_state: Path, fork_state: Path, fork_workspace: Path) -> bool:
        """Make the parent's session forkable by the fork's first run (see `opencode_sessions`); return whether it is.

        Cold: copied into the fork's state. Warm: nothing is copied (the fork's first run forks the
        session on its worker's server), so it is forkable when some agent state holds it.
        """
        if self.manifest.agent.mode == "warm":
            return freshest_holder(self._server_states(), session_id)[0] is not None
        return copy_session(session_id, parent_state, fork_state, fork_workspace)


def passed_env(names: list[str], environment: dict[str, str]) -> dict[str, str]:
    """Return the listed variables the agent may see (as `workers.agent_run` passes them per run)."""
    never = never_passed_to_agent()
    return {name: environment[name] for name in names if not name.startswith(never) and environment.get(name)}


@hookimpl
def check_health(manifest: Manifest, settings: Settings, offline: bool) -> list[HealthCheck]:
    in_use = {manifest.agent.name, *manifest.agent.choosable, *(c.agent for c in manifest.channels.values() if c.agent)}
    if NAME not in in_use:
        return []
    return [_binary_check(manifest, settings), *_model_checks(manifest, settings, offline), *_ask_check(manifest)]


def _ask_check(manifest: Manifest) -> list[HealthCheck]:
    """Warn when agent.ask is set but runs cannot ask: `opencode run` rejects every `ask` rule by itself."""
    if not manifest.agent.ask or manifest.agent.mode == "warm":
        return []
    return [HealthCheck("approvals", None, "agent.ask is set but agent.mode is cold: nobody can be asked, so matching "
                        "tool calls are refused", "set agent.mode: warm (approvals need the warm server)")]


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
