"""A second coding agent: OpenAI's Codex CLI (pinned `@openai/codex`), run headless in the workspace.

What is Codex's own lives here: its command line (`codex exec --json`, `exec resume ID` for a
follow-up), its per-conversation `CODEX_HOME` holding the user's config with the bot's sandbox
and approval policy laid over it, its model preflight and its `doctor` checks; its event parser
is `codex_events`. Starting it isolated, watching it and ending its whole process tree is the
shared runner's job (`plugins.agents.cli_runner`), exactly as for opencode.

    the user's $CODEX_HOME/config.toml (or ~/.codex/config.toml) ─► tomllib ─► POLICY laid over
        ─► <state dir>/codex-home/config.toml ─► codex exec --json ... -C WORKSPACE [resume ID] -- PROMPT

The sandbox is Codex's own `workspace-write` (bubblewrap + seccomp on Linux): commands may write
in the workspace only (not /tmp, not $TMPDIR, not the user's extra writable roots), with no
network; approvals are `never`, so nothing ever waits for a person.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.config import Manifest, Settings
from bot.errors import UserFacingError
from bot.hookspecs import hookimpl
from bot.types import Agent, AgentOutcome, AgentTask, EngineAPI, HealthCheck, RunEvent
from plugins.agents.cli_runner import CliInvocation, run_cli
from plugins.agents.codex_events import parse_line
from plugins.agents.opencode_model import ModelEndpoint, connection_problem
from plugins.agents.process_tree import namespace_wrapper

NAME = "codex"
#: Where `npm install` in the checkout puts the pinned CLI (package.json: @openai/codex 0.169.0).
_CHECKOUT = Path(__file__).resolve().parents[2]
BINARY_CANDIDATES = (_CHECKOUT / "node_modules/.bin/codex", Path("node_modules/.bin/codex"))
#: The per-conversation CODEX_HOME, under the conversation's agent state dir.
HOME_DIR = "codex-home"
#: Laid over the user's config for every run: never ask, never write outside the workspace.
#: `exclude_slash_tmp`/`exclude_tmpdir_env_var`: workspace-write otherwise lets commands write
#: anywhere under /tmp (PLATFORM_FACTS); `writable_roots` empties any extra roots of the user's.
POLICY: dict[str, Any] = {
    "approval_policy": "never",
    "sandbox_mode": "workspace-write",
    "sandbox_workspace_write": {"writable_roots": [], "network_access": False,
                                "exclude_slash_tmp": True, "exclude_tmpdir_env_var": True},
    "check_for_update_on_startup": False,
    "analytics": {"enabled": False},
}
#: Keys a config profile may set that would loosen POLICY: removed from every profile.
PROFILE_OVERRIDES = ("approval_policy", "sandbox_mode")
#: Codex's built-in provider when the config names none, and the variables its key may come from
#: (`CODEX_API_KEY` is read by `codex exec` only).
DEFAULT_PROVIDER = "openai"
DEFAULT_KEY_VARS = ("OPENAI_API_KEY", "CODEX_API_KEY")
DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: Codex thread ids are UUIDs; anything else (another agent's session id) starts a new thread.
THREAD_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
#: As root the runner starts the agent in a new PID namespace that still sees the host's /proc;
#: there Codex's bubblewrap sandbox never finishes a command (measured on 0.169.0: every
#: `exec_command` still "running" after its 10 s yield). A mount namespace of its own with a
#: /proc for that PID namespace (`unshare --mount --mount-proc`, no fork: it execs codex) fixes it.
PROC_MOUNT = ("--mount", "--mount-proc")
#: Keep colour codes out of the event lines and the log.
QUIET_ENV = {"NO_COLOR": "1", "TERM": "dumb"}
#: Seconds the binary gets to print its version (a cold node start on 2 busy cores).
VERSION_TIMEOUT_S = 20
NO_MODEL = ("No model is configured for the Codex agent: set `model` (and `model_provider`) in Codex's "
            "config.toml ($CODEX_HOME/config.toml, or ~/.codex/config.toml), listing its key's variable in "
            "agent.pass_env. See the README, Giving the agent a model.")
NOT_INSTALLED = ("The codex binary is not installed: run `npm install` in the bot's checkout "
                 "(it pins @openai/codex), or set CODEX_BIN.")


def resolve_binary(settings: Settings) -> Path | None:
    """Return the codex binary: CODEX_BIN, the pinned npm one, or PATH's; None when there is none."""
    explicit = settings.get("CODEX_BIN")
    if explicit:
        found = shutil.which(explicit)
        return Path(found) if found else None
    for candidate in BINARY_CANDIDATES:
        if candidate.is_file():
            return candidate.resolve()
    found = shutil.which("codex")
    return Path(found) if found else None


def user_config_path(settings: Settings) -> Path:
    """Return the Codex config of the bot's environment: $CODEX_HOME/config.toml, else ~/.codex/config.toml."""
    home = settings.get("CODEX_HOME")
    if home:
        return Path(home).expanduser() / "config.toml"
    return Path(settings.get("HOME") or Path.home()) / ".codex" / "config.toml"


def read_user_config(path: Path) -> dict[str, Any]:
    """Return the user's Codex config as a dict ({} when the file does not exist)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserFacingError(f"Codex's config {path} cannot be read as TOML: {exc}") from None


def active_settings(config: dict[str, Any]) -> dict[str, Any]:
    """Return the config's top level with its selected profile (`profile = "name"`) laid over it."""
    profile = (config.get("profiles") or {}).get(str(config.get("profile") or "")) or {}
    return {**config, **profile}


def model_endpoint(config: dict[str, Any]) -> tuple[ModelEndpoint | None, str | None]:
    """Return the model's endpoint and the variable its key is read from; (None, None) with no model."""
    active = active_settings(config)
    model = active.get("model")
    if not model or not isinstance(model, str):
        return None, None
    provider_name = str(active.get("model_provider") or DEFAULT_PROVIDER)
    provider = (config.get("model_providers") or {}).get(provider_name) or {}
    base_url = provider.get("base_url") or (DEFAULT_BASE_URL if provider_name == DEFAULT_PROVIDER else None)
    key_var = provider.get("env_key") or (DEFAULT_KEY_VARS[0] if provider_name == DEFAULT_PROVIDER else None)
    endpoint = ModelEndpoint(f"{provider_name}/{model}", "openai", str(base_url).rstrip("/") if base_url else None)
    return endpoint, key_var


def key_problem(key_var: str | None, env: dict[str, str]) -> str | None:
    """Return the sentence saying the model's key does not reach the agent, or None when it does."""
    if not key_var:
        return None
    accepted = DEFAULT_KEY_VARS if key_var == DEFAULT_KEY_VARS[0] else (key_var,)
    if any(env.get(name) for name in accepted):
        return None
    return (f"The Codex agent's model needs {key_var} and it does not reach the agent: export it and list it "
            f"in agent.pass_env in manifest.yml.")


def laid_over(config: dict[str, Any]) -> dict[str, Any]:
    """Return the user's config with POLICY laid over it (profiles cannot loosen it)."""
    merged = dict(config)
    for key, value in POLICY.items():
        merged[key] = {**(merged.get(key) or {}), **value} if isinstance(value, dict) else value
    profiles = merged.get("profiles")
    if isinstance(profiles, dict):
        merged["profiles"] = {name: {k: v for k, v in profile.items() if k not in PROFILE_OVERRIDES}
                              for name, profile in profiles.items() if isinstance(profile, dict)}
    return merged


def to_toml(config: dict[str, Any]) -> str:
    """Return a config dict as TOML: scalars first, then one `[table]` per nested dict (arrays inline)."""
    lines: list[str] = []
    _write_table(config, [], lines)
    return "\n".join(lines) + "\n"


def _write_table(table: dict[str, Any], path: list[str], lines: list[str]) -> None:
    if path:
        lines += ["", f"[{'.'.join(_key(part) for part in path)}]"]
    nested = {key: value for key, value in table.items() if isinstance(value, dict)}
    for key, value in table.items():
        if key not in nested:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in nested.items():
        _write_table(value, [*path, key], lines)


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)  # TOML spells them nan, inf, -inf too
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    return value.isoformat()  # dates and times, as tomllib read them


class CodexAgent:
    """Runs `codex exec --json` through the shared CLI runner (`bot.types.Agent`)."""

    name = NAME

    def __init__(self, binary: Path, user_config: dict[str, Any]) -> None:
        self.binary = binary
        self.user_config = user_config

    def run(self, task: AgentTask, on_event: Callable[[RunEvent], None], cancel: threading.Event) -> AgentOutcome:
        """Run the task with Codex; return how it ended (see `bot.types.Agent`)."""
        env = {**QUIET_ENV, "CODEX_HOME": str(self.write_home(task))}
        invocation = CliInvocation(name=NAME, argv=self.command(task), parse_line=parse_line, env=env)
        return run_cli(invocation, task, on_event, cancel)

    def command(self, task: AgentTask) -> list[str]:
        """Return Codex's command line for the task: a new thread, or `resume` of the conversation's."""
        # `--sandbox` is a command-line override: it wins over anything a config profile says.
        argv = [*own_proc(), str(self.binary), "exec", "--json", "--skip-git-repo-check", "--sandbox", "workspace-write",
                "-C", str(task.workspace)]
        if task.session_id and THREAD_ID.match(task.session_id):
            argv += ["resume", task.session_id]  # `resume` has no -C of its own: it stays before it
        # After "--" the prompt cannot be read as an option; stdin is /dev/null, so nothing is appended.
        return [*argv, "--", task.prompt]

    def write_home(self, task: AgentTask) -> Path:
        """Write the conversation's CODEX_HOME config (the user's, POLICY laid over it); return the dir."""
        home = task.state_dir / HOME_DIR
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(to_toml(laid_over(self.user_config)), encoding="utf-8")
        return home


def own_proc() -> list[str]:
    """Return the prefix giving Codex a /proc of its PID namespace when the runner makes one, or []."""
    wrapper = namespace_wrapper()
    return [wrapper[0], *PROC_MOUNT] if wrapper else []


@hookimpl
def register_agents(engine: EngineAPI) -> list[Agent]:
    return [ConfiguredCodex(engine.settings)]


class ConfiguredCodex:
    """Codex as the bot's environment configures it: binary, model and key checked when a run starts.

    A missing binary, no model or an unreachable one is then one sentence in the thread,
    not a crash at start and not Codex's retries.
    """

    name = NAME

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def run(self, task: AgentTask, on_event: Callable[[RunEvent], None], cancel: threading.Event) -> AgentOutcome:
        """Check the binary and the model, then run the task with Codex; return how it ended."""
        binary = resolve_binary(self.settings)
        if binary is None:
            raise UserFacingError(NOT_INSTALLED)
        config = read_user_config(user_config_path(self.settings))
        endpoint, key_var = model_endpoint(config)
        if endpoint is None:
            raise UserFacingError(NO_MODEL)
        problem = key_problem(key_var, task.env)
        if problem:
            raise UserFacingError(problem)
        unreachable = connection_problem(endpoint)
        if unreachable:
            raise UserFacingError(f"The Codex agent's model {endpoint.name} cannot be reached at {endpoint.base_url} "
                                  f"({unreachable}). Check its base_url in Codex's config.toml, or `python -m bot doctor`.")
        return CodexAgent(binary, config).run(task, on_event, cancel)


def in_use(manifest: Manifest) -> bool:
    """Return whether Codex is an agent of this bot: the default, a channel's, or choosable."""
    channels = (channel.agent for channel in manifest.channels.values())
    return NAME in (manifest.agent.name, *channels, *manifest.agent.choosable)


@hookimpl
def check_health(manifest: Manifest, settings: Settings, offline: bool) -> list[HealthCheck]:
    if not in_use(manifest):
        return []
    return [_binary_check(settings), _model_check(manifest, settings, offline)]


def _binary_check(settings: Settings) -> HealthCheck:
    binary = resolve_binary(settings)
    if binary is None:
        return HealthCheck("codex", False, "the codex binary was not found",
                           "run `npm install` in the checkout (pins @openai/codex), or set CODEX_BIN")
    try:
        result = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                                timeout=VERSION_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return HealthCheck("codex", False, f"{binary} does not run: {type(exc).__name__}", "reinstall with `npm install`")
    version = (result.stdout or result.stderr).strip().splitlines()[:1]
    return HealthCheck("codex", result.returncode == 0, f"{binary} {version[0] if version else ''}".strip(),
                       "" if result.returncode == 0 else "reinstall with `npm install`")


def _model_check(manifest: Manifest, settings: Settings, offline: bool) -> HealthCheck:
    path = user_config_path(settings)
    try:
        endpoint, key_var = model_endpoint(read_user_config(path))
    except UserFacingError as exc:
        return HealthCheck("codex model", False, str(exc), f"fix the TOML in {path}")
    if endpoint is None:
        return HealthCheck("codex model", False, f"no model in {path}: Codex runs fail at once",
                           "set model and model_provider there (README: Giving the agent a model)")
    passed = {name: value for name in manifest.agent.pass_env if (value := settings.get(name))}
    problem = key_problem(key_var, passed)
    if problem:
        return HealthCheck("codex model", False, f"{endpoint.name}: {key_var} does not reach the agent",
                           f"export {key_var} and list it in agent.pass_env")
    if offline:
        return HealthCheck("codex model", None, f"{endpoint.name}: not called (--offline)")
    unreachable = connection_problem(endpoint)
    if unreachable:
        return HealthCheck("codex model", False, f"{endpoint.name} at {endpoint.base_url}: {unreachable}",
                           f"check base_url in {path}, or run `doctor --offline` offline")
    return HealthCheck("codex model", True, f"{endpoint.name} at {endpoint.base_url} takes connections")
