"""Routing stage 1: explicit commands and overrides (`/agent ...`, `/ask ...`, `/help`, `help`)."""

from __future__ import annotations

from bot.hookspecs import hookimpl
from bot.types import EngineAPI, Message, Route, RouteDecision

#: Overrides that force a route, with the rest of the line as the request.
OVERRIDES = {"agent": Route.AGENT, "ask": Route.DIRECT}
#: Prefixes that mark a command line ("!" is what Errbot and many team bots use).
PREFIXES = ("/", "!")


@hookimpl(tryfirst=True)
def route_message(message: Message, engine: EngineAPI) -> RouteDecision | None:
    text = message.text.strip()
    if text[:1] in PREFIXES and len(text) > 1:
        name, _, argument = text[1:].partition(" ")
        name, argument = name.lower(), argument.strip()
        if name in OVERRIDES:
            if not argument:
                return RouteDecision(Route.COMMAND, "explicit", 1.0, f"/{name} without a request", command=name)
            return RouteDecision(OVERRIDES[name], "explicit", 1.0, f"/{name} override", text=argument)
        return RouteDecision(Route.COMMAND, "explicit", 1.0, f"/{name} command", command=name, argument=argument)
    # A bare command name on its own ("help", "history") is a command too; chat-line
    # commands (greetings) are left to the patterns stage.
    bare = text.lower().rstrip("?!.")
    command = engine.commands.get(bare)
    if command is not None and command.pattern is None:
        return RouteDecision(Route.COMMAND, "explicit", 1.0, f"bare {bare!r} command", command=bare)
    return None
