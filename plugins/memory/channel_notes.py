"""Memory across threads: exchanges remembered per channel, recalled by shared keywords.

A teammate asking in a new thread about something the channel settled last week gets that
exchange back in the model's context.
"""

from __future__ import annotations

from sqlalchemy import select

from bot.db.models import ConversationRow, MemoryRow
from bot.db.repositories import Memories
from bot.engine import Engine
from bot.hookspecs import hookimpl
from bot.memory import estimate_tokens, keywords
from bot.types import Conversation, MemoryItem, Message

_engine: Engine | None = None
#: Characters of the question and of the answer kept per exchange.
QUESTION_CHARS, ANSWER_CHARS = 300, 600
#: How many of the channel's newest exchanges are compared with a message.
SCAN_LIMIT = 200


@hookimpl
def startup(engine: Engine) -> None:
    global _engine
    _engine = engine


@hookimpl
def remember(message: Message, conversation: Conversation, reply: str) -> None:
    assert _engine is not None
    text = f"{message.user_name or message.user_id} asked: {message.text[:QUESTION_CHARS]}\nAnswer: {reply[:ANSWER_CHARS]}"
    with _engine.db.session() as session:
        Memories(session).add(text, conversation_id=conversation.id, tokens=estimate_tokens(text), kind="exchange")


@hookimpl
def recall(message: Message, conversation: Conversation, budget_tokens: int) -> list[MemoryItem]:
    assert _engine is not None
    wanted = keywords(message.text)
    if not wanted:
        return []
    where = conversation.where
    with _engine.db.reading() as session:
        rows = session.execute(
            select(MemoryRow.text, MemoryRow.tokens)
            .join(ConversationRow, ConversationRow.id == MemoryRow.conversation_id)
            .where(
                ConversationRow.platform == where.platform,
                ConversationRow.channel == where.channel,
                MemoryRow.conversation_id != conversation.id,
                MemoryRow.kind == "exchange",
            )
            .order_by(MemoryRow.id.desc())
            .limit(SCAN_LIMIT)
        ).all()
    items = []
    for text, tokens in rows:
        overlap = len(wanted & keywords(text)) / len(wanted)
        if overlap >= 0.34 and tokens <= budget_tokens:
            items.append(MemoryItem(text=text, source="channel", tokens=tokens, score=overlap))
    return items
