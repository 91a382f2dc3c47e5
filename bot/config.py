"""Configuration: `manifest.yml` for what the bot is, the environment for secrets and URLs.

The manifest is validated at start; a bad one raises `ConfigError` with one line per problem,
each naming the key and what is wrong. Secrets never live in the manifest: `Settings.from_env` reads them, and
`Settings.secret_values` lists them for the redaction step. The `platforms:` sections are
checked against the platform registry (`bot.platforms`), which `load_manifest` collects from
the manifest's plugins first.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import platformdirs
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from bot import constants
from bot.errors import ConfigError

#: The core's own secrets: redacted everywhere. Each platform's come from its descriptor
#: (`bot.platforms.secret_env_vars`); `Settings.secret_values` reads both.
SECRET_ENV_VARS = (
    "ANTHROPIC_API_KEY",
    "DATABASE_URL",
    "REDIS_URL",
    "BOT_WEB_SECRET",
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Platforms(BaseModel):
    """The `platforms:` section: one validated section per registered platform (`bot.platforms`).

    Each key is checked against the model its platform's descriptor names; a key no platform
    registered is an unknown key. `load_manifest` passes the registry it collected from the
    manifest's plugins; a manifest validated without one knows the built-in platforms.
    Sections are attributes: `manifest.platforms.slack.mode`.
    """

    # Sections land in the model's extras, already validated by the registry's models.
    model_config = ConfigDict(extra="allow")
    _registry: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _validate_sections(cls, data: Any, handler: Any, info: ValidationInfo) -> Any:
        if isinstance(data, cls):
            return data
        from bot import platforms as registry_module

        registry = (info.context or {}).get(registry_module.CONTEXT_KEY) or registry_module.builtin()
        sections = _sections_model(tuple((name, platform.settings) for name, platform in registry.items()))
        validated = sections.model_validate({} if data is None else data, context=info.context)
        platforms = handler({name: getattr(validated, name) for name in registry})
        platforms._registry = dict(registry)
        return platforms

    @property
    def registry(self) -> dict[str, Any]:
        """Return the platforms (`bot.platforms.Platform`) these sections were validated against."""
        return self._registry


@functools.lru_cache(maxsize=32)
def _sections_model(fields: tuple[tuple[str, type[BaseModel]], ...]) -> type[BaseModel]:
    """Return a strict model with one field per platform, defaulting to the platform's defaults."""
    return create_model("PlatformSections", __config__=ConfigDict(extra="forbid"),
                        **{name: (model, Field(default_factory=model)) for name, model in fields})


class PluginsSection(_Section):
    #: Extra plugin modules to load by dotted name, besides entry points.
    modules: list[str] = Field(default_factory=list)
    #: Plugin names (module names) to leave unregistered, built-ins included.
    disabled: list[str] = Field(default_factory=list)
    #: Per-plugin settings, keyed by plugin name; each plugin documents its own keys.
    settings: dict[str, dict[str, Any]] = Field(default_factory=dict)


class RouterSection(_Section):
    #: Ask an LLM about messages the cheap stages leave undecided (needs ANTHROPIC_API_KEY).
    llm_stage: bool = True
    #: A small, fast model: the classifier answers with one forced tool call.
    classifier_model: str = "claude-haiku-4-5"
    #: Decisions below this confidence are treated as tentative.
    min_confidence: float = Field(default=0.8, ge=0, le=1)
    #: The classification is a detour before the answer: it gives up sooner than an answer does,
    #: and then the cheap chain's tentative route stands.
    timeout_seconds: float = Field(default=15, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)


class LlmSection(_Section):
    """Direct answers: the model, its output and context budgets, and how hard to try."""

    #: anthropic 2.12 warns that claude-sonnet-4-5 is deprecated (end of life 2026-11-30).
    model: str = "claude-sonnet-4-6"
    max_tokens: int = Field(default=1024, ge=1)
    #: Tokens of thread history and recalled memory sent with a direct answer.
    context_budget_tokens: int = Field(default=6000, ge=100)
    #: Per request, and between two streamed events; the SDK retries a timed-out request.
    timeout_seconds: float = Field(default=60, gt=0)
    #: The SDK retries 408, 409, 429 and 5xx (529 overloaded included) with exponential
    #: backoff, honouring retry-after.
    max_retries: int = Field(default=3, ge=0, le=10)


class AgentSection(_Section):
    #: Which registered agent runs agent requests (a channel's `agent` overrides it there).
    name: str = "opencode"
    #: Agents `/agent --with NAME <task>` may pick for one run, besides the channel's own.
    choosable: list[str] = Field(default_factory=list)
    #: Path of the opencode binary; default: node_modules/.bin/opencode, then PATH (Codex: CODEX_BIN).
    binary: str | None = None
    #: opencode's model, as provider/model; default: opencode's own config (OPENCODE_CONFIG).
    #: Codex takes its model from its own config.toml.
    model: str | None = None
    timeout_seconds: int = Field(default=constants.AGENT_RUN_TIMEOUT_S, ge=10)
    allow_webfetch: bool = False
    #: Environment variables passed through to the agent (its model provider's key, say);
    #: the bot's own secrets are refused here.
    pass_env: list[str] = Field(default_factory=list)
    #: A running run whose worker has not reported for this long is marked failed.
    stale_after_seconds: int = Field(default=constants.RUN_STALE_AFTER_S, ge=5)
    #: A run lost with its worker is tried once more (its thread is told) instead of failing.
    retry_lost_runs: bool = False
    #: opencode only: "warm" runs on one `opencode serve` per worker process, started with the
    #: worker (a follow-up's first event in ~0.2 s instead of ~4 s), "cold" starts `opencode run`
    #: per run. A warm run the server cannot take falls back to the cold path.
    mode: Literal["warm", "cold"] = "warm"
    #: The warm server is restarted (between runs) once its RSS passes this (PLATFORM_FACTS:
    #: ~300 MB idle, +60-70 MB per new directory, GBs after days, #20695).
    server_max_rss_mb: int = Field(default=1500, ge=200)
    #: The warm server is restarted between runs after this many runs; 0: never for that reason.
    server_max_runs: int = Field(default=0, ge=0)
    #: Tool calls that wait for a person's approval in the thread, one `tool: pattern` each
    #: (opencode permission classes: bash, edit, read, ...; `*` matches anything), e.g.
    #: `[bash: "git push*", edit: "*.sql"]`. Warm mode only: `doctor` warns in cold mode.
    ask: list[dict[str, str]] = Field(default_factory=list)
    #: Seconds an approval request waits for an answer before it is rejected.
    approval_timeout_seconds: int = Field(default=300, ge=5)

    @field_validator("ask")
    @classmethod
    def _one_rule_each(cls, rules: list[dict[str, str]]) -> list[dict[str, str]]:
        for rule in rules:
            if len(rule) != 1:
                raise ValueError(f"each agent.ask entry is one `tool: pattern`, not {rule!r}")
        return rules

    def ask_rules(self) -> tuple[tuple[str, str], ...]:
        """Return the approval rules as (tool class, pattern) pairs."""
        return tuple((tool, str(pattern)) for rule in self.ask for tool, pattern in rule.items())


class ResourcesSection(_Section):
    """What a run's files become in the thread."""

    #: Files a run uploads one by one; the rest go up as one zip (each stays a resource).
    max_uploads: int = Field(default=constants.RUN_MAX_UPLOADS, ge=1, le=1000)
    #: A file larger than this (MiB) is named in the thread, not read or uploaded.
    max_file_mb: int = Field(default=constants.RUN_MAX_FILE_MB, ge=1, le=1024)


class ChannelPermissions(_Section):
    """A channel's own lists; an action it does not name follows the top-level `permissions`."""

    agent: list[str] | None = None
    ask: list[str] | None = None
    cancel: list[str] | None = None
    share: list[str] | None = None
    admin: list[str] | None = None


class WebSection(_Section):
    """The web view (`python -m bot web`): a live page per run and a resource browser."""

    #: Serve the web view inside `run` and `chat` too (a thread), not only from `python -m bot web`.
    enabled: bool = False
    #: Where `python -m bot web` listens; a proxy in front of it serves BOT_PUBLIC_URL.
    host: str = "127.0.0.1"
    port: int = Field(default=8700, ge=1, le=65535)
    #: How long a link in a status message opens its pages: a week, the life of a typical thread.
    link_ttl_hours: float = Field(default=168, gt=0)


class ChannelSection(_Section):
    #: A git repository (path or URL) the channel's workspaces start from.
    repo: str | None = None
    #: The agent that runs this channel's requests (a registered agent's name); default agent.name.
    agent: str | None = None
    #: Overrides of the top-level `permissions` in this channel, per action.
    permissions: ChannelPermissions = Field(default_factory=ChannelPermissions)


class Permissions(_Section):
    """Who may do what: people's names (see `people`), platform user ids (`U0..`, `slack:U0..`,
    `discord:81..`) or "*" for everyone, per action. `admin` may do everything."""

    #: May start the agent.
    agent: list[str] = Field(default_factory=lambda: ["*"])
    #: May get answers in chat.
    ask: list[str] = Field(default_factory=lambda: ["*"])
    #: May cancel other people's runs (everyone may cancel their own).
    cancel: list[str] = Field(default_factory=list)
    #: May /share resources out of a channel.
    share: list[str] = Field(default_factory=lambda: ["*"])
    #: Everything, plus everyone's /usage and team memories.
    admin: list[str] = Field(default_factory=list)


class BudgetSection(_Section):
    """Spend allowed per day (UTC); unset means no limit."""

    runs_per_day: int | None = Field(default=None, ge=0)
    tokens_per_day: int | None = Field(default=None, ge=0)
    cost_per_day: float | None = Field(default=None, ge=0)


class Budgets(_Section):
    """Spend budgets: each person's (across channels) and each channel's (everyone in it)."""

    person: BudgetSection = Field(default_factory=BudgetSection)
    channel: BudgetSection = Field(default_factory=BudgetSection)


class MemorySection(_Section):
    """What the bot remembers and how much of a model's context it gives to it."""

    #: The share of `llm.context_budget_tokens` the thread is sure of when memories compete
    #: for it; memories take the rest, and what they leave goes back to the thread.
    thread_share: float = Field(default=0.6, ge=0.1, le=1)
    #: Days after which a memory's relevance to a message counts half.
    half_life_days: float = Field(default=30, gt=0)
    #: Summarise a thread's older part with this model (default: router.classifier_model);
    #: without ANTHROPIC_API_KEY the first sentences of each message are kept instead.
    summary_model: str | None = None
    #: The longest fact `/remember` keeps, in characters.
    max_fact_chars: int = Field(default=2000, ge=10, le=20000)
    #: Offer to remember a decision or a preference stated in a thread ("React ✅ to keep it").
    propose: bool = True
    #: Hours an unconfirmed proposal can still be confirmed; older ones are deleted.
    proposal_ttl_hours: float = Field(default=72, gt=0)
    #: The most earlier messages read from the platform when the bot first works in a thread.
    history_messages: int = Field(default=200, ge=0, le=1000)


class Manifest(_Section):
    """What the bot is: its name, platforms, plugins and their settings, and who may do what."""

    name: str = "Threadwork"
    description: str = ""
    platforms: Platforms = Field(default_factory=Platforms)
    plugins: PluginsSection = Field(default_factory=PluginsSection)
    router: RouterSection = Field(default_factory=RouterSection)
    llm: LlmSection = Field(default_factory=LlmSection)
    agent: AgentSection = Field(default_factory=AgentSection)
    resources: ResourcesSection = Field(default_factory=ResourcesSection)
    web: WebSection = Field(default_factory=WebSection)
    memory: MemorySection = Field(default_factory=MemorySection)
    #: Per-channel settings keyed "platform:channel", e.g. "slack:C0123".
    channels: dict[str, ChannelSection] = Field(default_factory=dict)
    #: One person, several platform identities: name -> ["slack:U0ALICE", "discord:81234567890"].
    people: dict[str, list[str]] = Field(default_factory=dict)
    permissions: Permissions = Field(default_factory=Permissions)
    budgets: Budgets = Field(default_factory=Budgets)

    def allows(self, action: str, user_id: str, where: Any = None) -> bool:
        """Return whether the user may do the action (in the thread `where`, when given).

        `admin` may do everything; a channel's own list for an action replaces the top-level one.
        """
        return self.granted("admin", user_id, where) or self.granted(action, user_id, where)

    def granted(self, action: str, user_id: str, where: Any = None) -> bool:
        """Return whether the action's list (the channel's, else the top level) names the user."""
        allowed: list[str] = getattr(self.permissions, action)
        if where is not None:
            channel = self.channels.get(f"{where.platform}:{where.channel}")
            override = getattr(channel.permissions, action) if channel else None
            allowed = override if override is not None else allowed
        platform = getattr(where, "platform", None)
        return any(self._names(entry, user_id, platform) for entry in allowed)

    def person_of(self, user_id: str, platform: str | None) -> str | None:
        """Return the `people` name the platform identity belongs to, or None."""
        for name, identities in self.people.items():
            if user_id in identities or (platform and f"{platform}:{user_id}" in identities):
                return name
        return None

    def _names(self, entry: str, user_id: str, platform: str | None) -> bool:
        if entry in ("*", user_id) or (platform and entry == f"{platform}:{user_id}"):
            return True
        return entry in self.people and self.person_of(user_id, platform) == entry


def load_manifest(path: Path | None) -> Manifest:
    """Return the validated manifest at `path`, or the built-in defaults when it is None."""
    if path is None:
        return _validated({}, "built-in defaults")
    name = path.name
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (set BOT_MANIFEST or create it)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{name}: {where}invalid YAML: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: the top level must be a mapping of keys, not {type(raw).__name__}")
    return _validated(raw, name)


def _validated(raw: dict[str, Any], name: str) -> Manifest:
    """Return the manifest validated against the platforms its plugins register; raise every problem."""
    from bot import platforms

    registry, problems = platforms.for_raw_manifest(raw)
    try:
        manifest = Manifest.model_validate(raw, context={platforms.CONTEXT_KEY: registry})
    except ValidationError as exc:
        problems += _problems(exc)
    if problems:
        raise ConfigError("\n".join(f"{name}: {problem}" for problem in problems)) from None
    return manifest


def _problems(exc: ValidationError) -> list[str]:
    """Return one line per validation problem: the key, then what is wrong with it."""
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        lines.append(f"{key}: {message}")
    return lines


@dataclass(frozen=True)
class Settings:
    """Everything read from the environment, once, at start."""

    data_dir: Path
    database_url: str
    redis_url: str | None
    manifest_path: Path | None
    trace_plugins: bool = False
    env: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Return the settings the environment describes, with embedded defaults."""
        env = dict(os.environ if environ is None else environ)
        data_dir = Path(env.get("BOT_DATA_DIR") or platformdirs.user_data_dir("threadwork")).expanduser()
        database_url = env.get("DATABASE_URL") or f"sqlite:///{data_dir / 'threadwork.db'}"
        manifest = env.get("BOT_MANIFEST")
        if manifest:
            manifest_path: Path | None = Path(manifest)
        elif Path("manifest.yml").is_file():
            manifest_path = Path("manifest.yml")
        else:
            manifest_path = None
        return cls(
            data_dir=data_dir,
            database_url=database_url,
            redis_url=env.get("REDIS_URL") or None,
            manifest_path=manifest_path,
            trace_plugins=env.get("BOT_TRACE_PLUGINS", "") not in ("", "0", "false"),
            env=env,
        )

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return an environment variable as read at start (empty counts as unset)."""
        return self.env.get(name) or default

    @property
    def secret_values(self) -> list[str]:
        """Return the values of every secret in the environment (the core's and the platforms'), for redaction."""
        from bot.platforms import secret_env_vars

        values = [self.env.get(name, "") for name in (*SECRET_ENV_VARS, *secret_env_vars())]
        return [value for value in values if len(value) >= 6]


#: Where the pinned agent binary lands after `npm install` in the checkout.
_CHECKOUT = Path(__file__).resolve().parent.parent
AGENT_BINARY_CANDIDATES = (_CHECKOUT / "node_modules/.bin/opencode", Path("node_modules/.bin/opencode"))


def resolve_agent_binary(manifest: Manifest, settings: Settings) -> Path | None:
    """Return the agent binary: OPENCODE_BIN, the manifest's, the pinned npm one, or PATH's."""
    import shutil

    explicit = settings.get("OPENCODE_BIN") or manifest.agent.binary
    if explicit:
        found = shutil.which(explicit)
        return Path(found) if found else None
    for candidate in AGENT_BINARY_CANDIDATES:
        if candidate.is_file():
            return candidate.resolve()
    found = shutil.which("opencode")
    return Path(found) if found else None


def missing_credentials(platform: str, manifest: Manifest, settings: Settings) -> list[str]:
    """Return the environment variables the platform's adapter needs and does not have."""
    from bot import platforms

    return platforms.missing_credentials(manifest, platform, settings)
