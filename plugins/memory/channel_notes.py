"""Memory across threads: exchanges remembered per channel, recalled by shared keywords.

A teammate asking in a new thread about something the channel settled last week gets that
exchange back in the model's context.
"""

from __future__ import annotations

from bot.db.repositories import Memories
from bot.hookspecs import hookimpl
from bot.memory import estimate_tokens, keywords
from bot.types import Conversation, EngineAPI, MemoryItem, Message

#: Characters of the question and of the answer kept per exchange.
QUESTION_CHARS, ANSWER_CHARS = 300, 600
#: How many of the channel's newest exchanges are compared with a message.
SCAN_LIMIT = 200


@hookimpl
def remember(message: Message, conversation: Conversation, reply: str, engine: EngineAPI) -> None:
    text = f"{message.user_name or message.user_id} asked: {message.text[:QUESTION_CHARS]}\nAnswer: {reply[:ANSWER_CHARS]}"
    with engine.db.session() as session:
        Memories(session).add(text, conversation_id=conversation.id, tokens=estimate_tokens(text), kind="exchange")


@hookimpl
def recall(message: Message, conversation: Conversation, budget_tokens: int, engine: EngineAPI) -> list[MemoryItem]:
    wanted = keywords(message.text)
    if not wanted:
        return []
    with engine.db.reading() as session:
        exchanges = Memories(session).in_channel(conversation.where, kind="exchange",
                                                 excluding_conversation=conversation.id, limit=SCAN_LIMIT)
    items = []
    for exchange in exchanges:
        overlap = len(wanted & keywords(exchange.text)) / len(wanted)
        if overlap >= 0.34 and exchange.tokens <= budget_tokens:
            items.append(MemoryItem(text=exchange.text, source="channel", tokens=exchange.tokens, score=overlap))
    return items
