"""Chat ports for processes that have no adapter running: a worker posting into a thread.

Registered as a built-in plugin (the `chat_port` hook). The platform's descriptor
(`bot.platforms`) names its port factory by dotted path; the factory's module is imported
only when a port for it is first needed, and the factory decides whether it can build one
(it returns None when, say, the platform's token is missing).
"""

from __future__ import annotations

from typing import Any

from bot import platforms
from bot.engine import Engine
from bot.hookspecs import hookimpl


@hookimpl(trylast=True)
def chat_port(platform: str, engine: Engine) -> Any:
    """Return the port the platform's descriptor builds for this engine, or None."""
    descriptor = platforms.registered(engine.manifest).get(platform)
    if descriptor is None or descriptor.port is None:
        return None
    return platforms.resolve(descriptor.port)(engine)
