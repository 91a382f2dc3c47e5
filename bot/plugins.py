"""The plugin host: built-ins, entry points and manifest modules, all registered alike."""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

import pluggy

from bot import hookspecs
from bot.config import Manifest
from bot.errors import ConfigError

log = logging.getLogger("bot.plugins")

#: The built-in plugins, registered exactly like a third-party plugin would be. Defaults that
#: a plugin may override are marked `trylast=True` in their modules.
DEFAULT_PLUGINS = (
    "plugins.routers.explicit",
    # Registered before the patterns stage so that pluggy calls it after them (later
    # registrations are called first); third-party routers come later still, so before both.
    "plugins.routers.heuristics",
    "plugins.routers.patterns",
    "plugins.routers.fallback",
    "plugins.routers.llm_classifier",
    "plugins.answer.claude",
    "plugins.commands",
    "plugins.resources",
    "plugins.forks",
    "plugins.runs",
    "plugins.approvals",
    "plugins.agents.opencode",
    "plugins.agents.codex",
    "plugins.smalltalk",
    "plugins.memory.thread_history",
    "plugins.memory.channel_notes",
    "plugins.memory.commands",
    "plugins.memory.history",
    "plugins.memory.proposals",
    "adapters.ports",
)

#: The entry-point group third-party packages register their plugin modules under.
ENTRY_POINT_GROUP = hookspecs.PROJECT


def make_plugin_manager(manifest: Manifest, *, load_entrypoints: bool = True, trace: bool = False) -> pluggy.PluginManager:
    """Return a plugin manager with the built-ins, entry-point plugins and manifest modules."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    disabled = set(manifest.plugins.disabled)
    for name in disabled:
        pm.set_blocked(name)
    for name in DEFAULT_PLUGINS:
        if name not in disabled:
            pm.register(importlib.import_module(name), name=name)
    if load_entrypoints and os.environ.get("BOT_DISABLE_ENTRYPOINTS", "") in ("", "0"):
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for name in manifest.plugins.modules:
        if name not in disabled and pm.get_plugin(name) is None:
            pm.register(_import_plugin(name), name=name)
    unknown = _unknown_hooks(pm)
    if unknown:
        raise ConfigError("\n".join(unknown))
    pm.check_pending()  # whatever the walk above missed still fails here, before start
    if trace:
        _trace_hook_calls(pm)
    return pm


def _unknown_hooks(pm: pluggy.PluginManager) -> list[str]:
    """Return one line per implementation of a hook that does not exist (a misspelling)."""
    known = sorted(name for name in vars(hookspecs) if hasattr(getattr(hookspecs, name), f"{hookspecs.PROJECT}_spec"))
    lines = []
    for name, caller in sorted(vars(pm.hook).items()):
        if name.startswith("_") or caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if not impl.optionalhook:
                lines.append(f"plugin {impl.plugin_name!r} implements {name!r}, which is not a Threadwork hook "
                             f"(misspelled?); the hooks are: {', '.join(known)}")
    return lines


def _import_plugin(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(f"manifest.yml: plugins.modules: cannot import {name!r} ({exc})") from None


def _trace_hook_calls(pm: pluggy.PluginManager) -> None:
    """Log every hook call with its arguments and results (BOT_TRACE_PLUGINS=1)."""

    def before(hook_name: str, impls: list[pluggy.HookImpl], kwargs: dict) -> None:
        log.info("hook %s(%s) -> %s", hook_name, ", ".join(sorted(kwargs)), [impl.plugin_name for impl in impls])

    def after(outcome: pluggy.Result, hook_name: str, impls: list[pluggy.HookImpl], kwargs: dict) -> None:
        log.info("hook %s returned %r", hook_name, outcome.get_result() if outcome.exception is None else outcome.exception)

    pm.add_hookcall_monitoring(before, after)
