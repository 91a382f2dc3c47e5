"""Routing stage 2: chat lines that match a command's pattern (greetings, thanks, ...)."""

from __future__ import annotations

import re

from bot.hookspecs import hookimpl
from bot.types import EngineAPI, Message, Route, RouteDecision

#: A line that goes on with a contrast is a report, not small talk: "thanks but it still fails".
CONTRAST = re.compile(r"\b(?:but|still|though|however|except|although)\b", re.IGNORECASE)


@hookimpl
def route_message(message: Message, engine: EngineAPI) -> RouteDecision | None:
    text = message.text.strip()
    for command in engine.commands.values():
        if command.pattern is not None and command.pattern.search(text):
            if CONTRAST.search(text):
                return None
            return RouteDecision(Route.COMMAND, "pattern", 0.99, f"matches the {command.name!r} pattern",
                                 command=command.name, argument=text)
    return None
