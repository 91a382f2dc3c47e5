"""The one writer of messages and routing decisions: every incoming message, its decision
(and the LLM stage's better one), every reply and every reply's final text.

These run for each message, so they skip the ORM and SQLAlchemy's per-statement execution
machinery: each statement is compiled once for the database's dialect and run on the raw
DB-API cursor, with SQLAlchemy's own bind processors (so rows read back through the ORM are
identical). Conversation and participant ids are cached per process: they never change once
created. bench/dispatch.py measures the difference (about 5x over the ORM).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Engine as SqlEngine

from bot.db.models import MessageRow, RouteDecisionRow
from bot.db.repositories import Conversations, Participants
from bot.errors import DuplicateEvent
from bot.types import Conversation, RouteDecision, ThreadRef, utcnow

#: Conversations and participants remembered per process (least recently used dropped first).
ID_CACHE_SIZE = 10_000


class _Lru(OrderedDict):
    def remember(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > ID_CACHE_SIZE:
            self.popitem(last=False)


class _Prepared:
    """One statement compiled for a dialect, run with plain values on a DB-API cursor."""

    def __init__(self, statement: Any, engine: SqlEngine, table: Table) -> None:
        dialect = engine.dialect
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self.names: list[str] = list(compiled.positiontup or [])
        self.positional = bool(compiled.positiontup)
        columns = {column.name: column for column in table.columns}
        self.processors = {
            name: processor
            for name in compiled.binds
            if name in columns and (processor := columns[name].type.dialect_impl(dialect).bind_processor(dialect))
        }

    def run(self, cursor: Any, values: dict[str, Any]) -> Any:
        for name, processor in self.processors.items():
            values[name] = processor(values[name])
        cursor.execute(self.sql, [values[name] for name in self.names] if self.positional else values)
        return cursor


def _insert(table: Table, columns: list[str], returning: bool = False) -> Any:
    statement = insert(table).values({name: bindparam(name) for name in columns})
    return statement.returning(table.c.id) if returning else statement


_MESSAGE_COLUMNS = ["conversation_id", "role", "text", "external_id", "participant_id", "reply_to_id", "created_at"]
_DECISION_COLUMNS = ["message_id", "route", "stage", "confidence", "reason", "decided_at"]


class Inbox:
    """Stores incoming messages, their routing decisions and the bot's replies, fast."""

    def __init__(self, engine: SqlEngine) -> None:
        self._engine = engine
        messages, decisions = MessageRow.__table__, RouteDecisionRow.__table__
        self._insert_message = _Prepared(_insert(messages, _MESSAGE_COLUMNS, returning=True), engine, messages)
        self._insert_decision = _Prepared(_insert(decisions, _DECISION_COLUMNS), engine, decisions)
        self._find_message = _Prepared(
            select(messages.c.id).where(messages.c.conversation_id == bindparam("conversation_id"),
                                        messages.c.external_id == bindparam("external_id")),
            engine, messages,
        )
        self._delete_message = _Prepared(delete(messages).where(messages.c.id == bindparam("id")), engine, messages)
        self._set_external_id = _Prepared(
            update(messages).where(messages.c.id == bindparam("id"), messages.c.external_id == bindparam("old"))
            .values(external_id=bindparam("new")),
            engine, messages,
        )
        self._update_reply = _Prepared(
            update(messages)
            .where(messages.c.conversation_id == bindparam("conversation_id"),
                   messages.c.external_id == bindparam("external_id"))
            .values(text=bindparam("text"), reply_to_id=func.coalesce(messages.c.reply_to_id, bindparam("reply_to_id"))),
            engine, messages,
        )
        self._update_decision = _Prepared(
            update(decisions).where(decisions.c.message_id == bindparam("message_id")).values(
                {name: bindparam(name) for name in _DECISION_COLUMNS if name != "message_id"}),
            engine, decisions,
        )
        self._integrity_errors = engine.dialect.loaded_dbapi.IntegrityError
        # SQLite: take the write lock up front, as bot.db does for ORM sessions.
        self._begin = "BEGIN IMMEDIATE" if engine.dialect.name == "sqlite" else None
        self._conversations: _Lru = _Lru()
        self._participants: _Lru = _Lru()
        self._lock = threading.Lock()

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """Yield a DB-API cursor inside one transaction: committed on success, else rolled back."""
        connection = self._engine.raw_connection()
        try:
            cursor = connection.cursor()
            if self._begin:
                cursor.execute(self._begin)
            try:
                yield cursor
            except BaseException:
                connection.rollback()
                raise
            connection.commit()
        finally:
            connection.close()

    def conversation(self, where: ThreadRef, title: str) -> Conversation:
        """Return the thread's conversation, creating it on first sight (its own transaction)."""
        with self._lock:
            cached = self._conversations.get(where)
        if cached is not None:
            return cached
        from sqlalchemy.orm import Session

        with Session(self._engine) as session, session.begin():
            conversation = Conversations(session).ensure(where, title)
        with self._lock:
            self._conversations.remember(where, conversation)
        return conversation

    def forget(self, where: ThreadRef) -> None:
        """Drop a cached conversation, so its next use reads it again (its agent session changed)."""
        with self._lock:
            self._conversations.pop(where, None)

    def participant(self, conversation_id: int, user_id: str, name: str) -> int:
        """Return the participant's id, recording them on first sight or when their name changed."""
        key = (conversation_id, user_id)
        with self._lock:
            cached = self._participants.get(key)
        if cached is not None and cached[1] == name:
            return cached[0]
        from sqlalchemy.orm import Session

        with Session(self._engine) as session, session.begin():
            participant_id = Participants(session).touch(conversation_id, user_id, name)
        with self._lock:
            self._participants.remember(key, (participant_id, name))
        return participant_id

    def find(self, conversation_id: int, external_id: str) -> int | None:
        """Return the id of the message the platform calls `external_id`, if it is stored."""
        connection = self._engine.raw_connection()
        try:
            found = self._find_message.run(connection.cursor(), {"conversation_id": conversation_id,
                                                                 "external_id": external_id}).fetchone()
            connection.rollback()
        finally:
            connection.close()
        return found[0] if found else None

    def add_message(self, cursor: Any, conversation_id: int, role: str, text: str, *,
                    external_id: str | None = None, participant_id: int | None = None,
                    reply_to_id: int | None = None, created_at: datetime | None = None) -> int:
        """Store a message and return its id; raise `DuplicateEvent` if its external id is stored."""
        try:
            row = self._insert_message.run(cursor, {
                "conversation_id": conversation_id, "role": role, "text": text, "external_id": external_id,
                "participant_id": participant_id, "reply_to_id": reply_to_id, "created_at": created_at or utcnow(),
            }).fetchone()
        except self._integrity_errors as exc:
            raise DuplicateEvent(f"message {external_id} of conversation {conversation_id} is stored") from exc
        return row[0]

    def delete_message(self, cursor: Any, message_id: int) -> None:
        """Remove a stored message (a reply the platform refused)."""
        self._delete_message.run(cursor, {"id": message_id})

    def replace_external_id(self, cursor: Any, message_id: int, old: str, new: str) -> bool:
        """Give a stored message another external id if it still has `old`; return whether it did.

        A reply stored before it is posted holds a placeholder (`bot.engine.unposted_marker`) until
        the platform gives its id; changing it only from the expected value makes claims atomic.
        """
        return self._set_external_id.run(cursor, {"id": message_id, "old": old, "new": new}).rowcount == 1

    def record_decision(self, cursor: Any, message_id: int, decision: RouteDecision) -> None:
        """Store why the bot routed a new message as it did."""
        self._insert_decision.run(cursor, _decision_values(message_id, decision))

    def replace_decision(self, cursor: Any, message_id: int, decision: RouteDecision) -> None:
        """Store a better decision for a message (the LLM stage's), replacing the cheap one."""
        if self._update_decision.run(cursor, _decision_values(message_id, decision)).rowcount == 0:
            self._insert_decision.run(cursor, _decision_values(message_id, decision))

    def store_reply(self, cursor: Any, conversation_id: int, external_id: str, text: str,
                    reply_to_id: int | None = None) -> None:
        """Store the final text of a bot message that was posted (and perhaps stored) before."""
        updated = self._update_reply.run(cursor, {"conversation_id": conversation_id, "external_id": external_id,
                                                  "text": text, "reply_to_id": reply_to_id}).rowcount
        if updated == 0:
            self.add_message(cursor, conversation_id, "assistant", text, external_id=external_id,
                             reply_to_id=reply_to_id)


def _decision_values(message_id: int, decision: RouteDecision) -> dict[str, Any]:
    return {"message_id": message_id, "route": decision.route.value, "stage": decision.stage,
            "confidence": decision.confidence, "reason": decision.reason[:500], "decided_at": utcnow()}


