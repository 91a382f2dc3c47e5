"""Chat ports for processes that have no adapter running: a worker posting into a thread.

Registered as a built-in plugin (the `chat_port` hook). Each platform's module is imported
only when a port for it is first needed, and its factory decides whether it can build one
(it returns None when, say, the platform's token is missing).
"""

from __future__ import annotations

import importlib
from typing import Any

from bot.engine import Engine
from bot.hookspecs import hookimpl

#: platform -> "module:function" taking the engine and returning a ChatPort or None.
PORT_FACTORIES = {
    "console": "adapters.console:remote_port",
    "slack": "adapters.slack:web_api_port",
    "discord": "adapters.discord:rest_port",
}


@hookimpl(trylast=True)
def chat_port(platform: str, engine: Engine) -> Any:
    target = PORT_FACTORIES.get(platform)
    if target is None:
        return None
    module_name, _, function = target.partition(":")
    return getattr(importlib.import_module(module_name), function)(engine)
