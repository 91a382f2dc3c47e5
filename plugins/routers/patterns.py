"""Routing stage 2: chat lines that match a command's pattern (greetings, thanks, ...)."""

from __future__ import annotations

from bot.engine import Engine
from bot.hookspecs import hookimpl
from bot.types import Message, Route, RouteDecision


@hookimpl
def route_message(message: Message, engine: Engine) -> RouteDecision | None:
    text = message.text.strip()
    for command in engine.commands.values():
        if command.pattern is not None and command.pattern.search(text):
            return RouteDecision(Route.COMMAND, "pattern", 0.99, f"matches the {command.name!r} pattern",
                                 command=command.name, argument=text)
    return None
