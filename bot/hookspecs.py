"""The plugin contract: every hook a Threadwork plugin may implement.

Each hookspec's first docstring line says what an implementation returns. Call hooks with
keyword arguments; an implementation takes only the arguments it needs. Every hook that needs
state receives `engine` (a `bot.types.EngineAPI`): plugins keep no engine of their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from bot.config import Manifest, Settings
    from bot.platforms import Platform
    from bot.types import (
        Agent,
        AgentRun,
        ChatPort,
        Command,
        Conversation,
        EngineAPI,
        HealthCheck,
        MemoryItem,
        Message,
        Reaction,
        RouteDecision,
        RunEvent,
    )

PROJECT = "threadwork"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec(historic=True)
def startup(engine: EngineAPI) -> None:
    """Return nothing; prepare the plugin once the engine, database and queue are ready.

    Historic: a plugin registered after start is called too, with the same engine.

    :param engine: the running engine (settings, database, ports). Do not keep it: every hook
        that needs it receives it.
    """


@hookspec
def register_commands() -> list[Command]:
    """Return the chat commands this plugin adds (`bot.types.Command`)."""


@hookspec
def register_agents(engine: EngineAPI) -> list[Agent]:
    """Return the agents this plugin adds (`bot.types.Agent`, where the protocol is described).

    Collected once per engine, into `engine.agents`, before `startup`.

    :param engine: the engine being built: its settings and manifest configure the agents.
    """


@hookspec(firstresult=True)
def route_message(message: Message, conversation: Conversation, engine: EngineAPI) -> RouteDecision | None:
    """Return a `RouteDecision` for the message from a cheap stage, or None to pass.

    Runs inside `dispatch`: implementations are synchronous and must not call a model or the
    network. Built-in stages, in order: commands and overrides, patterns, heuristics, and a
    `trylast` tentative fallback. Stops at first non-None result.

    :param message: the incoming message, already persisted.
    :param conversation: the conversation the message belongs to.
    :param engine: the engine, for reading the thread's state (recent messages, runs).
    """


@hookspec(firstresult=True)
def classify_message(message: Message, conversation: Conversation, tentative: RouteDecision,
                     engine: EngineAPI) -> RouteDecision | None:
    """Return a `RouteDecision` from an expensive stage (an LLM), or None to keep `tentative`.

    Runs in a worker, only for messages the cheap stages left tentative. Stops at first
    non-None result.

    :param message: the message to classify.
    :param conversation: its conversation.
    :param tentative: the cheap chain's fallback decision.
    :param engine: the engine, for the manifest, the thread's history and redaction.
    """


@hookspec(firstresult=True)
def answer_message(
    message: Message, conversation: Conversation, memories: list[MemoryItem], engine: EngineAPI, reply_to: int
) -> str | None:
    """Return the final text of a direct answer, having streamed it into the thread, or None.

    Runs in a worker. An implementation posts and edits through `engine.say` / `engine.edit`
    (which redact and persist), passing `reply_to` with the final edit. Return None when it
    cannot answer (no model configured), so the next implementation or the engine's notice
    takes over. Stops at first non-None result.

    :param message: the message to answer.
    :param conversation: its conversation.
    :param memories: what the memory plugins recalled, within the token budget.
    :param engine: the engine, for the thread's history and the chat port.
    :param reply_to: the stored id of the message being answered.
    """


@hookspec
def recall(message: Message, conversation: Conversation, budget_tokens: int, engine: EngineAPI) -> list[MemoryItem]:
    """Return what this plugin remembers that matters for the message, within the budget.

    All implementations are called; the engine merges their items by score until the budget
    is spent.

    :param message: the message being answered.
    :param conversation: its conversation.
    :param budget_tokens: the most tokens this plugin's items may take together.
    :param engine: the engine, for the thread's history and the database.
    """


@hookspec
def remember(message: Message, conversation: Conversation, reply: str, engine: EngineAPI) -> None:
    """Return nothing; store what is worth keeping from an exchange that just ended.

    :param message: the user's message.
    :param conversation: its conversation.
    :param reply: the bot's final answer (a direct answer or an agent run's summary).
    :param engine: the engine, for the database.
    """


@hookspec
def reaction_added(reaction: Reaction, engine: EngineAPI) -> None:
    """Return nothing; act on a reaction a person added to a message the bot posted.

    Called by the adapter after the platform has its acknowledgement, once per reaction; it
    may read and write the database and post a short reply, nothing slower.

    :param reaction: who reacted, with which emoji, to which message (`bot.types.Reaction`).
    :param engine: the engine, for the database, the manifest's permissions and posting.
    """


@hookspec
def report_progress(run: AgentRun, event: RunEvent, engine: EngineAPI) -> None:
    """Return nothing; observe one event of an agent run as it is stored.

    :param run: the run, as it stands before the event is applied.
    :param event: the typed event just parsed from the agent's output (already redacted).
    :param engine: the engine.
    """


@hookspec(firstresult=True)
def chat_port(platform: str, engine: EngineAPI) -> ChatPort | None:
    """Return a `ChatPort` that reaches the platform from any process, or None.

    Workers use it to post and edit without the adapter's live connection (Slack's Web API,
    Discord's REST API). Stops at first non-None result.

    :param platform: the platform's name, as in `ThreadRef.platform`.
    :param engine: the engine, for settings and secrets.
    """


@hookspec
def check_health(manifest: Manifest, settings: Settings, offline: bool) -> list[HealthCheck]:
    """Return this plugin's lines for `python -m bot doctor` (`bot.types.HealthCheck`).

    An agent checks its binary, that a model is configured and, unless `offline`, that the
    model answers one tiny request. Checks must finish within seconds and print no secret.

    :param manifest: the validated manifest.
    :param settings: the environment as read at start.
    :param offline: True when the person asked not to call anything over the network.
    """


@hookspec
def register_platforms() -> list[Platform]:
    """Return the chat platforms this plugin adds (`bot.platforms.Platform` descriptors).

    Collected when the manifest is loaded, before it is validated: each descriptor's settings
    model validates its `platforms.<name>` section, and `run`, `doctor`, the worker ports and
    `python -m bot manifest` read the descriptor. A descriptor named like a built-in replaces
    it (the built-ins are `trylast`). Importing the module must not import a platform SDK.
    """
