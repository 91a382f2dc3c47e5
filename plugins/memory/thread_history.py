"""Memory: the thread's own recent messages, newest first, within the budget."""

from __future__ import annotations

from bot.hookspecs import hookimpl
from bot.memory import estimate_tokens
from bot.types import Conversation, EngineAPI, MemoryItem, Message

#: How far back the thread is read; the budget usually stops earlier.
MAX_MESSAGES = 50


@hookimpl
def recall(message: Message, conversation: Conversation, budget_tokens: int, engine: EngineAPI) -> list[MemoryItem]:
    entries = engine.history(conversation.id, MAX_MESSAGES, without_run_status=True)
    if entries and entries[-1].role == "user" and entries[-1].text == message.text:
        entries = entries[:-1]  # the message being answered is sent on its own
    items: list[MemoryItem] = []
    spent = 0
    total = len(entries)
    for age, entry in enumerate(reversed(entries)):
        text = f"{entry.author}: {entry.text}"
        tokens = estimate_tokens(text)
        if spent + tokens > budget_tokens:
            break
        spent += tokens
        # Newer messages score higher; thread history outranks other memories when recent.
        items.append(MemoryItem(text=text, source=f"thread:{entry.role}", tokens=tokens, score=1.0 - age / (total + 1)))
    return items
