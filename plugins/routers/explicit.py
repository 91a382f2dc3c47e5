"""Routing stage 1: explicit commands and overrides (`/agent ...`, `/agent --with NAME ...`, `/ask ...`, `/help`)."""

from __future__ import annotations

from bot.errors import UserFacingError
from bot.hookspecs import hookimpl
from bot.runs import AGENT_CHOICE, QUEUE_STAGE, agent_for, requested_agent
from bot.types import Command, CommandContext, Conversation, EngineAPI, Message, Route, RouteDecision

#: Overrides that force a route, with the rest of the line as the request. `/queue <task>` is
#: an agent request that waits for the thread's running run instead of steering it.
OVERRIDES = {"agent": Route.AGENT, "ask": Route.DIRECT, "queue": Route.AGENT}
#: Prefixes that mark a command line ("!" is what Errbot and many team bots use).
PREFIXES = ("/", "!")
#: The command a refused `/agent --with NAME <task>` becomes, so the refusal is answered at once.
#: Its pattern keeps it out of `help` (the line never reaches the patterns stage: this one is first).
REFUSED_CHOICE = "agent-with"


@hookimpl
def register_commands() -> list[Command]:
    return [Command(REFUSED_CHOICE, "say why `/agent --with NAME` cannot pick that agent", refuse_choice,
                    pattern=AGENT_CHOICE)]


def refuse_choice(context: CommandContext) -> str:
    """Say why the agent picked with `--with` cannot run here (or how to pick one)."""
    choice = requested_agent(context.message.text)
    if choice and choice[0]:
        agent_for(context.engine, context.conversation, choice[0])  # raises the one-sentence reason
    return "Usage: `/agent --with NAME <task>`, NAME one of agent.choosable in manifest.yml."


@hookimpl(tryfirst=True)
def route_message(message: Message, conversation: Conversation, engine: EngineAPI) -> RouteDecision | None:
    text = message.text.strip()
    if text[:1] in PREFIXES and len(text) > 1:
        name, _, argument = text[1:].partition(" ")
        name, argument = name.lower(), argument.strip()
        choice = requested_agent(text) if name == "agent" else None
        if choice is not None:
            return _chosen_agent(choice, conversation, engine)
        if name in OVERRIDES:
            if not argument:
                return RouteDecision(Route.COMMAND, "explicit", 1.0, f"/{name} without a request", command=name)
            stage = QUEUE_STAGE if name == "queue" else "explicit"
            return RouteDecision(OVERRIDES[name], stage, 1.0, f"/{name} override", text=argument)
        return RouteDecision(Route.COMMAND, "explicit", 1.0, f"/{name} command", command=name, argument=argument)
    # A bare command name on its own ("help", "history") is a command too; chat-line
    # commands (greetings) are left to the patterns stage.
    bare = text.lower().rstrip("?!.")
    command = engine.commands.get(bare)
    if command is not None and command.pattern is None:
        return RouteDecision(Route.COMMAND, "explicit", 1.0, f"bare {bare!r} command", command=bare)
    return None


def _chosen_agent(choice: tuple[str, str], conversation: Conversation, engine: EngineAPI) -> RouteDecision:
    """Return the decision for `/agent --with NAME <task>`: the agent route, usage, or the refusal."""
    name, task = choice
    if not name or not task:
        return RouteDecision(Route.COMMAND, "explicit", 1.0, "/agent --with without a name or task", command="agent")
    try:
        agent_for(engine, conversation, name)  # bot.runs.start_run asks again, for the run it creates
    except UserFacingError:
        return RouteDecision(Route.COMMAND, "explicit", 1.0, f"/agent --with {name} refused", command=REFUSED_CHOICE)
    return RouteDecision(Route.AGENT, "explicit", 1.0, f"/agent --with {name} override", text=task)
