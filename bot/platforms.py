"""The platform registry: one descriptor per chat platform, read by everything that names platforms.

A platform (Slack, Discord, the console; Teams or Matrix from a plugin) is one `Platform`
value: its name, the pydantic model of its `platforms.<name>` manifest section, the
environment variables it needs and those that are secret, and, by dotted path, what serves
it (`python -m bot run`), what builds a worker's port (`chat_port`) and what prints its app
manifest (`python -m bot manifest <name>`). Dotted paths keep a descriptor light: reading
one imports no platform SDK.

Platforms are contributed like everything else, through a hook: a module whose
`register_platforms()` returns descriptors. The built-ins are the modules in
`BUILTIN_PLATFORMS`, registered exactly like third-party code and marked `trylast`, so a
plugin's descriptor of the same name replaces a built-in. Because the manifest's
`platforms:` keys are validated against the registry, the registry is collected from the
raw manifest's `plugins` section (and entry points) before the manifest is validated, the
way pytest loads `-p` plugins before it parses options.

    load_manifest ─► collect(plugins.modules, entry points) ─► validate platforms.<name>
    run / doctor / ports / manifest ─► registered(manifest) ─► Platform ─► resolve(dotted path)
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from bot import hookspecs
from bot.types import HealthCheck

if TYPE_CHECKING:
    from pydantic import BaseModel

    from bot.config import Manifest, Settings

log = logging.getLogger("bot.platforms")

#: The built-in platforms' descriptor modules, registered like a third-party plugin would be
#: (each implements `register_platforms`). Order is the order `run` and `doctor` list them in.
BUILTIN_PLATFORMS = (
    "adapters.console_platform",
    "adapters.slack_platform",
    "adapters.discord_platform",
)
#: The core's own variables an agent never gets, whatever the platforms: where the bot's data lives.
CORE_NEVER_PASSED = ("DATABASE_URL", "REDIS_URL", "BOT_WEB_SECRET")
#: The validation context key under which `load_manifest` hands the registry to the schema.
CONTEXT_KEY = "platforms"


@dataclass(frozen=True)
class Platform:
    """One chat platform, as the CLI, `doctor`, the worker ports and the manifest schema see it."""

    #: The `platforms:` key in manifest.yml, and `ThreadRef.platform`.
    name: str
    #: The pydantic model of the `platforms.<name>` section (unknown keys must be errors).
    settings: type[BaseModel]
    #: Variables the adapter needs to start; a function of the section when they depend on it.
    required_env: Sequence[str] | Callable[[Any], Sequence[str]] = ()
    #: Variables whose values are secrets: redacted everywhere.
    secret_env: Sequence[str] = ()
    #: Every variable of the platform starts with it; none of them is ever passed to the agent.
    env_prefix: str = ""
    #: "module.function" taking the engine and serving until stopped; None: `run` does not start it.
    serve: str | None = None
    #: "module.function" taking the engine, returning a ChatPort for a worker (or None).
    port: str | None = None
    #: "module.function" taking (manifest, settings), returning what `bot manifest <name>` prints.
    manifest: str | None = None
    #: `doctor`'s fix line when credentials are missing.
    setup_hint: str = ""
    #: `doctor`'s note on a ready section, e.g. Slack's mode; None for no note.
    summary: Callable[[Any], str] | None = None

    def required(self, section: Any) -> tuple[str, ...]:
        """Return the variables this platform needs to start with the given manifest section."""
        needed = self.required_env(section) if callable(self.required_env) else self.required_env
        return tuple(needed)

    def missing(self, section: Any, settings: Settings) -> list[str]:
        """Return the required variables the environment does not set."""
        return [name for name in self.required(section) if not settings.get(name)]

    def credential_check(self, section: Any, settings: Settings) -> HealthCheck:
        """Return `doctor`'s line for this platform's credentials: ok, or a warning saying what to set."""
        missing = self.missing(section, settings)
        if missing:
            return HealthCheck(self.name, None, f"missing {', '.join(missing)}",
                               self.setup_hint or f"export {', '.join(missing)}")
        needed = self.required(section)
        detail = f"{', '.join(needed)} present" if needed else "no credentials needed"
        if self.summary is not None:
            detail += f" ({self.summary(section)})"
        return HealthCheck(self.name, True, detail)


def resolve(path: str) -> Any:
    """Return the object a dotted path ("package.module.name") names, importing its module."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


# -- collecting descriptors -------------------------------------------------------------------

#: Every descriptor any registry of this process has held (overridden built-ins included), so
#: that redaction set up before a manifest is read still knows the platforms' secrets.
_seen: list[Platform] = []


def collect(modules: Iterable[str] = (), disabled: Iterable[str] = (), *,
            entrypoints: bool | None = None) -> dict[str, Platform]:
    """Return the platforms the built-ins, entry points and `modules` contribute, by name.

    Sources and order are the plugin host's (`bot.plugins.make_plugin_manager`): a module in
    `disabled` contributes nothing. A module that cannot be imported raises ImportError.
    """
    if entrypoints is None:
        entrypoints = os.environ.get("BOT_DISABLE_ENTRYPOINTS", "") in ("", "0")
    return dict(_collect(tuple(modules), tuple(sorted(set(disabled))), entrypoints))


@functools.lru_cache(maxsize=32)
def _collect(modules: tuple[str, ...], disabled: tuple[str, ...], entrypoints: bool) -> tuple[tuple[str, Platform], ...]:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in disabled:
        pm.set_blocked(name)
    for name in BUILTIN_PLATFORMS:
        if name not in disabled:
            pm.register(importlib.import_module(name), name=name)
    if entrypoints:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    for name in modules:
        if name not in disabled and pm.get_plugin(name) is None:
            pm.register(importlib.import_module(name), name=name)
    chosen: dict[str, Platform] = {}
    # pluggy's order: plugins before the `trylast` built-ins, so a plugin's platform of the
    # same name wins.
    for contributed in pm.hook.register_platforms():
        for platform in contributed or []:
            chosen.setdefault(platform.name, platform)
    # Listed as the built-ins are, then the plugins' platforms.
    builtin_names = [platform.name for name in BUILTIN_PLATFORMS if pm.get_plugin(name) is not None
                     for platform in pm.get_plugin(name).register_platforms()]
    order = [*dict.fromkeys(name for name in builtin_names if name in chosen), *chosen]
    registry = {name: chosen[name] for name in dict.fromkeys(order)}
    _seen.extend(platform for platform in registry.values() if not any(platform is seen for seen in _seen))
    return tuple(registry.items())


def builtin() -> dict[str, Platform]:
    """Return the built-in platforms alone (what a manifest built without `load_manifest` knows)."""
    return collect(entrypoints=False)


def for_raw_manifest(raw: dict[str, Any]) -> tuple[dict[str, Platform], list[str]]:
    """Return the platforms a not-yet-validated manifest's plugins contribute, and problems found.

    A module that cannot be imported is a problem line (the rest still contribute); a
    malformed `plugins` section is left for the schema to report.
    """
    plugins = raw.get("plugins")
    plugins = plugins if isinstance(plugins, dict) else {}
    modules = [m for m in plugins.get("modules") or [] if isinstance(m, str)] if isinstance(
        plugins.get("modules"), list) else []
    disabled = [m for m in plugins.get("disabled") or [] if isinstance(m, str)] if isinstance(
        plugins.get("disabled"), list) else []
    problems = []
    importable = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            problems.append(f"plugins.modules: cannot import {name!r} ({exc})")
        else:
            importable.append(name)
    return collect(importable, disabled), problems


# -- what the rest of the bot reads -------------------------------------------------------------


def registered(manifest: Manifest) -> dict[str, Platform]:
    """Return the platforms the manifest was validated against, by name, built-ins first."""
    return manifest.platforms.registry


def section(manifest: Manifest, name: str) -> Any:
    """Return the validated `platforms.<name>` section of the manifest."""
    return getattr(manifest.platforms, name)


def enabled(manifest: Manifest, *, served: bool = True) -> list[Platform]:
    """Return the platforms the manifest enables (with `served`: only those `run` starts), in order."""
    return [platform for platform in registered(manifest).values()
            if section(manifest, platform.name).enabled and (platform.serve or not served)]


def missing_credentials(manifest: Manifest, name: str, settings: Settings) -> list[str]:
    """Return the variables the named platform needs with this manifest and the environment lacks."""
    platform = registered(manifest).get(name)
    return platform.missing(section(manifest, name), settings) if platform else []


def secret_env_vars(platforms: Iterable[Platform] | None = None) -> tuple[str, ...]:
    """Return the platforms' secret variables (default: every platform this process has seen)."""
    return tuple(dict.fromkeys(name for platform in _every(platforms) for name in platform.secret_env))


def never_passed_to_agent(platforms: Iterable[Platform] | None = None) -> tuple[str, ...]:
    """Return the names and prefixes of variables never passed to the agent, for `str.startswith`.

    Each platform's prefix (all of its variables) or, without one, its secret and required
    variables; then the core's `CORE_NEVER_PASSED`. Default: every platform this process has seen.
    """
    names: list[str] = []
    for platform in _every(platforms):
        if platform.env_prefix:
            names.append(platform.env_prefix)
        else:
            fixed = () if callable(platform.required_env) else tuple(platform.required_env)
            names += [*platform.secret_env, *fixed]
    return tuple(dict.fromkeys([*names, *CORE_NEVER_PASSED]))


def _every(platforms: Iterable[Platform] | None) -> list[Platform]:
    """Return the given platforms, or the built-ins and every platform this process has seen."""
    if platforms is not None:
        return list(platforms)
    builtins = list(builtin().values())
    return [*builtins, *(platform for platform in _seen if not any(platform is b for b in builtins))]
