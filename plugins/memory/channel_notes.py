"""Memory across threads: each finished exchange is kept for its channel, with who asked.

A teammate asking in a new thread about something the channel settled last week gets that
exchange back (the context builder's "related exchanges"). `/forget me` removes the
exchanges a person asked.
"""

from __future__ import annotations

from bot.db.repositories import Memories
from bot.hookspecs import hookimpl
from bot.memory import MemoryKind, estimate_tokens
from bot.types import Conversation, EngineAPI, Message

#: Characters of the question and of the answer kept per exchange.
QUESTION_CHARS, ANSWER_CHARS = 300, 600


@hookimpl
def remember(message: Message, conversation: Conversation, reply: str, engine: EngineAPI) -> None:
    text = f"{message.user_name or message.user_id} asked: {message.text[:QUESTION_CHARS]}\nAnswer: {reply[:ANSWER_CHARS]}"
    with engine.db.session() as session:
        Memories(session).add(text, conversation_id=conversation.id, tokens=estimate_tokens(text),
                              kind=MemoryKind.EXCHANGE.value, author_id=message.user_id,
                              author_name=message.user_name)
