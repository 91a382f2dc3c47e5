"""What was said in a thread before the bot was mentioned: read from the platform once, kept as its messages.

    worker: recall (tryfirst) ─► first time in this thread? (claim `conversations.history_fetched_at`)
        ─► port.thread_history(where, before=the first stored message) ─► skip bots and what is stored
        ─► redact ─► store as the conversation's messages (their platform ids and times) ─► the
           context builder shows them in the order they were said

Runs in the worker, never in `dispatch`: a platform call takes a network round trip. Ports
that cannot read history (the console) are skipped. When the platform refuses for good (a
missing Slack scope, Discord's Missing Access) the thread stays marked as read and the answer
goes on without it; any other failure (the network, a 429, a 5xx) releases the mark, so the next
message in the thread tries again.
"""

from __future__ import annotations

import logging

from bot.db.repositories import Conversations, Memories, Messages
from bot.errors import ConfigError, DuplicateEvent, HistoryRefused, RateLimited
from bot.hookspecs import hookimpl
from bot.memory import thread_scope
from bot.types import Conversation, EngineAPI, MemoryItem, ThreadHistoryPort, ThreadMessage

log = logging.getLogger(__name__)


@hookimpl(tryfirst=True)
def recall(conversation: Conversation, engine: EngineAPI) -> list[MemoryItem]:
    # First among the recall hooks, so the context builder already finds the earlier messages.
    fetch_once(engine, conversation)
    return []


def fetch_once(engine: EngineAPI, conversation: Conversation) -> int:
    """Store the thread's earlier platform messages the first time the bot works in it; return how many."""
    limit = engine.manifest.memory.history_messages
    if limit <= 0:
        return 0
    try:
        port = engine.port_for(conversation.where.platform)
    except ConfigError:  # no port for this platform in this process: nothing to read from
        return 0
    if not isinstance(port, ThreadHistoryPort) or not _claim(engine, conversation.id):
        return 0
    try:
        earlier = port.thread_history(conversation.where, before=_first_platform_id(engine, conversation.id),
                                      limit=limit)
    except HistoryRefused as exc:
        log.warning("thread %s: the platform will not show its earlier messages (%s); answering without them",
                    conversation.where, exc)
        return 0
    except RateLimited as exc:
        log.warning("thread %s: the platform asks to wait (%s); its earlier messages are read with its next message",
                    conversation.where, exc)
        _release(engine, conversation.id)
        return 0
    except Exception:  # boundary: a platform failure must not cost the answer; the next message tries again
        log.exception("thread %s: reading its earlier messages failed; trying again with its next message",
                      conversation.where)
        _release(engine, conversation.id)
        return 0
    return _store(engine, conversation, earlier)


def _claim(engine: EngineAPI, conversation_id: int) -> bool:
    """Mark the thread's history as read, if nobody has; return whether this call did."""
    with engine.db.session() as session:
        return Conversations(session).claim_history(conversation_id)


def _release(engine: EngineAPI, conversation_id: int) -> None:
    with engine.db.session() as session:
        Conversations(session).release_history(conversation_id)


def _first_platform_id(engine: EngineAPI, conversation_id: int) -> str | None:
    """Return the platform id of the thread's first stored person's message: history ends before it."""
    with engine.db.reading() as session:
        return Messages(session).first_platform_id(conversation_id)


def _store(engine: EngineAPI, conversation: Conversation, earlier: list[ThreadMessage]) -> int:
    """Store people's messages not stored yet, redacted, as the conversation's; return how many."""
    stored = 0
    people = [item for item in earlier if not item.is_bot and item.text.strip()]
    for item in people:
        if engine.inbox.find(conversation.id, item.external_id):
            continue
        participant = engine.inbox.participant(conversation.id, item.user_id, item.user_name or item.user_id)
        try:
            with engine.inbox.transaction() as cursor:  # one each: a duplicate spoils only its own
                engine.inbox.add_message(cursor, conversation.id, "user", engine.redact(item.text),
                                         external_id=item.external_id, participant_id=participant,
                                         created_at=item.sent_at)
        except DuplicateEvent:  # the adapter stored the same message meanwhile
            continue
        stored += 1
    if stored:
        with engine.db.session() as session:  # every process's cache of the thread reads it again
            Memories(session).touch([thread_scope(conversation.id).token])
    log.info("thread %s: kept %d earlier message(s) of %d read from the platform", conversation.where, stored,
             len(earlier))
    return stored
