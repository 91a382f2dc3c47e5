"""Threadwork: a team's coding agent, in the chat thread.

The core: platform-neutral types, the plugin contract, the engine, configuration and the
database. Nothing here imports a platform SDK, an adapter, a plugin or a worker module.

What a plugin may use is exported here (`__all__`); everything else is the core's own and may
change. Names load on first use, so `import bot` stays cheap (every command starts with it).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: The plugin surface: each public name and the module that defines it.
_EXPORTS = {
    # the contract
    "hookimpl": "bot.hookspecs",
    "EngineAPI": "bot.types",
    "Agent": "bot.types",
    "ChatPort": "bot.types",
    "ThreadHistoryPort": "bot.types",
    "ChoicePort": "bot.types",
    "SteerableAgent": "bot.types",
    # what a steerable agent gets while it runs (steering messages, approval answers)
    "RunInbox": "bot.signals",
    "Signal": "bot.signals",
    # what flows through it
    "AgentOutcome": "bot.types",
    "AgentRun": "bot.types",
    "AgentTask": "bot.types",
    "Attachment": "bot.types",
    "Choice": "bot.types",
    "Command": "bot.types",
    "CommandContext": "bot.types",
    "Conversation": "bot.types",
    "EventKind": "bot.types",
    "HealthCheck": "bot.types",
    "HistoryEntry": "bot.types",
    "MemoryItem": "bot.types",
    "Message": "bot.types",
    "Reaction": "bot.types",
    "Reply": "bot.types",
    "Resource": "bot.types",
    "Route": "bot.types",
    "RouteDecision": "bot.types",
    "RunEvent": "bot.types",
    "RunState": "bot.types",
    "RunStatus": "bot.types",
    "SearchHit": "bot.types",
    "ThreadMessage": "bot.types",
    "ThreadRef": "bot.types",
    # errors a plugin raises or catches
    "UserFacingError": "bot.errors",
    "CommandError": "bot.errors",
    "ConfigError": "bot.errors",
    "HistoryRefused": "bot.errors",
    "PermissionDenied": "bot.errors",
    "RateLimited": "bot.errors",
    "ResourceGone": "bot.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bot' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
