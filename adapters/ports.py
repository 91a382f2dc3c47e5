"""Chat ports for processes that have no adapter running: a worker posting into a thread.

Registered as a built-in plugin (the `chat_port` hook). Each platform's module is imported
only when a port for it is first needed.
"""

from __future__ import annotations

from typing import Any

from bot.engine import Engine
from bot.hookspecs import hookimpl


@hookimpl(trylast=True)
def chat_port(platform: str, engine: Engine) -> Any:
    settings = engine.settings
    if platform == "console" and settings.redis_url:
        from adapters.console import RemoteConsolePort

        return RemoteConsolePort(settings.redis_url, settings.data_dir / "console-files")
    return None
