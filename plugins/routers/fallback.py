"""The last routing stage: when nothing cheap decided, answer in chat, tentatively.

Marked `trylast`, so any plugin's router decides first. The decision is tentative: a worker
may ask the LLM stage (`classify_message`) before acting on it.
"""

from __future__ import annotations

from bot.hookspecs import hookimpl
from bot.types import Route, RouteDecision


@hookimpl(trylast=True)
def route_message() -> RouteDecision:
    return RouteDecision(Route.DIRECT, "fallback", 0.5, "no cheap stage decided; answering in chat", tentative=True)
