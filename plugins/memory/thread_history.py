"""Memory: what a model is given for a message, from the context builder (`bot.context`).

The thread (its summary and newest messages), then the asker's own facts, the channel's, the
team's and related exchanges from the channel's other threads, in that priority order within
the budget. A thread that outgrows its room is summarised by Claude (`summaries`), or without
an API key by its messages' first sentences.
"""

from __future__ import annotations

from bot.hookspecs import hookimpl
from bot.types import Conversation, EngineAPI, MemoryItem, Message
from plugins.memory import summaries


@hookimpl
def recall(message: Message, conversation: Conversation, budget_tokens: int, engine: EngineAPI) -> list[MemoryItem]:
    context = engine.context.build(message, conversation, budget_tokens, summarise=summaries.summariser(engine))
    return context.items()
