"""The `Memories` repository: facts, exchanges and thread summaries, their scopes and search index.

The index is full-text, in SQL, one entry per fact or exchange, written in the transaction
that stores it and deleted in the one that forgets it:

- SQLite: the FTS5 table `memories_fts` (rowid = memories.id; columns scope, body), ranked by
  bm25. It keeps its own copy of the text, so a deleted entry leaves nothing behind to read.
- PostgreSQL: the `search` tsvector column of `memories` (GIN index `ix_memories_search`),
  ranked by ts_rank; it goes with its row.

Each entry carries its scope's token (`bot.memory.Scope.token`), so a search reads only the
scopes that apply. Scores are relevance weighed by age: halved after `half_life_days`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from bot.db import search, vectors
from bot.db.models import (
    AgentRunRow,
    ConversationRow,
    MemoryRow,
    MemoryScopeRow,
    MemoryVectorRow,
    MessageRow,
    ParticipantRow,
)
from bot.memory import Memory, MemoryKind, Scope, ScopeKind, thread_scope
from bot.types import HistoryEntry, MemoryItem, ThreadRef, utcnow

#: The FTS5 table migration 0004 creates on SQLite.
FTS_TABLE = "memories_fts"
#: Kinds that are searched (summaries are read by their thread, never searched).
SEARCHED_KINDS = (MemoryKind.FACT.value, MemoryKind.EXCHANGE.value)
#: Days after which a memory's relevance counts half (an exchange from last month still
#: matters; one from last year rarely does). The manifest's `memory.half_life_days` overrides it.
HALF_LIFE_DAYS = 30.0
#: Full-text matches ranked per search on SQLite, the newest first: a message's common words
#: match a good share of a channel, and ranking them all took twice as long at 100,000 memories
#: (FTS5 walks its index newest first and stops at this many); older matches still come back
#: when they hold every word, or by meaning.
CANDIDATES = 200
#: Reciprocal rank fusion's constant (Cormack et al. 2009): a hit's blended score is the sum of
#: 1 / (RRF_K + its rank) over the full-text and the semantic rankings it appears in.
RRF_K = 60
_UPSERT = {"postgresql": postgresql_insert, "sqlite": sqlite_insert}


def _memory(row: Any, score: float = 0.0) -> Memory:
    return Memory(id=row.id, scope=ScopeKind(row.scope), kind=MemoryKind(row.kind) if row.kind in _KINDS else
                  MemoryKind.FACT, text=row.text, tokens=row.tokens, platform=row.platform, channel=row.channel,
                  user_id=row.user_id, author_id=row.author_id, author_name=row.author_name,
                  created_at=row.created_at, conversation_id=row.conversation_id,
                  source_message_id=row.source_message_id, through_message_id=row.through_message_id, score=score)


_KINDS = {kind.value for kind in MemoryKind}


def scope_of(row_scope: str, platform: str, channel: str, user_id: str) -> Scope:
    """Return the scope a stored row belongs to."""
    return Scope(ScopeKind(row_scope), platform, channel=channel, user_id=user_id)


class Memories:
    """What the bot keeps about people, channels, the team and threads: one path in, domain types out."""

    def __init__(self, session: Session) -> None:
        self.s = session

    # -- writes -------------------------------------------------------------------------------

    def add(self, text: str, *, conversation_id: int | None = None, tokens: int, kind: str = MemoryKind.FACT.value,
            source_message_id: int | None = None, scope: Scope | None = None, author_id: str = "",
            author_name: str = "") -> int:
        """Store one memory (already redacted) and index it; return its id.

        Without `scope`, the memory belongs to the conversation's channel (exchanges).
        """
        if scope is None:
            if conversation_id is None:
                raise ValueError("a memory needs a scope or a conversation")
            place = self.s.execute(select(ConversationRow.platform, ConversationRow.channel)
                                   .where(ConversationRow.id == conversation_id)).one()
            scope = Scope(ScopeKind.CHANNEL, place.platform, channel=place.channel)
        row = MemoryRow(conversation_id=conversation_id, text=text, tokens=tokens, kind=kind,
                        source_message_id=source_message_id, scope=scope.kind.value, platform=scope.platform,
                        channel=scope.channel, user_id=scope.user_id, author_id=author_id,
                        author_name=author_name[:200])
        self.s.add(row)
        self.s.flush()
        if kind in SEARCHED_KINDS:
            index_memory(self.s, row.id, scope.token, text)
        if kind == MemoryKind.FACT.value:
            self.touch([scope.token])
        return row.id

    def set_source(self, memory_id: int, message_id: int) -> None:
        """Record the chat message a memory came from (a command runs before its message is stored)."""
        self.s.execute(update(MemoryRow).where(MemoryRow.id == memory_id).values(source_message_id=message_id))

    def delete(self, memories: Iterable[Memory]) -> int:
        """Forget these memories: rows, index entries and vectors; return how many went."""
        memories = list(memories)
        if not memories:
            return 0
        ids = [memory.id for memory in memories]
        _unindex(self.s, ids)
        # The foreign key cascades too (SQLite runs with foreign_keys=ON); said here so it never depends on it.
        self.s.execute(delete(MemoryVectorRow).where(MemoryVectorRow.memory_id.in_(ids)))
        self.s.execute(delete(MemoryRow).where(MemoryRow.id.in_(ids)))
        self.touch({scope_of(m.scope.value, m.platform, m.channel, m.user_id).token for m in memories})
        return len(ids)

    def forget_person(self, platform: str, user_id: str) -> int:
        """Forget everything held about a person on a platform; return how many memories went.

        Their own memories, the facts and exchanges they are the source of, and the summaries
        of threads they wrote in (a later answer summarises those threads again).
        """
        threads = select(ParticipantRow.conversation_id).join(
            ConversationRow, ConversationRow.id == ParticipantRow.conversation_id).where(
            ConversationRow.platform == platform, ParticipantRow.user_id == user_id)
        rows = self.s.scalars(select(MemoryRow).where(MemoryRow.platform == platform, or_(
            MemoryRow.user_id == user_id, MemoryRow.author_id == user_id,
            (MemoryRow.kind == MemoryKind.SUMMARY.value) & MemoryRow.conversation_id.in_(threads)))).all()
        removed = self.delete([_memory(row) for row in rows])
        self.touch(thread_scope(row.conversation_id).token for row in rows if row.kind == MemoryKind.SUMMARY.value)
        person = Scope(ScopeKind.PERSON, platform, user_id=user_id).token
        self.s.execute(delete(MemoryScopeRow).where(MemoryScopeRow.key == person))
        return removed

    def set_summary(self, conversation_id: int, where: ThreadRef, summary: str, through_message_id: int,
                    tokens: int) -> None:
        """Keep the thread's summary (replacing the one before) of its messages up to an id."""
        self.s.execute(delete(MemoryRow).where(MemoryRow.conversation_id == conversation_id,
                                               MemoryRow.kind == MemoryKind.SUMMARY.value))
        self.s.add(MemoryRow(conversation_id=conversation_id, text=summary, tokens=tokens,
                             kind=MemoryKind.SUMMARY.value, scope=ScopeKind.THREAD.value, platform=where.platform,
                             channel=where.channel, through_message_id=through_message_id))
        self.s.flush()
        self.touch([thread_scope(conversation_id).token])

    def touch(self, tokens: Iterable[str]) -> None:
        """Give these scopes a new version stamp, so every cache of them reads them again."""
        insert = _UPSERT[self.s.get_bind().dialect.name]
        for token in sorted(set(tokens)):
            statement = insert(MemoryScopeRow.__table__).values(key=token, version=uuid.uuid4().hex,
                                                                 changed_at=utcnow())
            self.s.execute(statement.on_conflict_do_update(
                index_elements=["key"], set_={"version": statement.excluded.version,
                                              "changed_at": statement.excluded.changed_at}))

    # -- proposed memories (kind `proposal`: not indexed, listed or recalled until confirmed) --

    def propose(self, text: str, *, scope: Scope, conversation_id: int, platform_message_id: str | None, tokens: int,
                author_id: str = "", author_name: str = "", source_message_id: int | None = None) -> int:
        """Store a proposed memory, posted as the chat message `platform_message_id`; return its id."""
        row = MemoryRow(conversation_id=conversation_id, text=text, tokens=tokens, kind=MemoryKind.PROPOSAL.value,
                        source_message_id=source_message_id, scope=scope.kind.value, platform=scope.platform,
                        channel=scope.channel, user_id=scope.user_id, author_id=author_id,
                        author_name=author_name[:200], platform_message_id=platform_message_id)
        self.s.add(row)
        self.s.flush()
        return row.id

    def posted_as(self, memory_id: int, platform_message_id: str) -> None:
        """Record the chat message a proposal was posted as (it is stored before it is posted)."""
        self.s.execute(update(MemoryRow).where(MemoryRow.id == memory_id)
                       .values(platform_message_id=platform_message_id))

    def proposal(self, platform: str, platform_message_id: str) -> Memory | None:
        """Return the unconfirmed proposal posted as this chat message, or None."""
        row = self.s.scalars(select(MemoryRow).where(MemoryRow.platform == platform,
                                                     MemoryRow.platform_message_id == platform_message_id,
                                                     MemoryRow.kind == MemoryKind.PROPOSAL.value)).first()
        return _memory(row) if row else None

    def latest_proposal(self, conversation_id: int) -> Memory | None:
        """Return the conversation's newest unconfirmed proposal, or None."""
        row = self.s.scalars(select(MemoryRow).where(MemoryRow.conversation_id == conversation_id,
                                                     MemoryRow.kind == MemoryKind.PROPOSAL.value)
                             .order_by(MemoryRow.id.desc()).limit(1)).first()
        return _memory(row) if row else None

    def confirm(self, proposal: Memory) -> bool:
        """Turn a proposal into a kept fact of its scope and index it; False if it was confirmed or gone already."""
        changed = self.s.execute(update(MemoryRow).where(MemoryRow.id == proposal.id,
                                                         MemoryRow.kind == MemoryKind.PROPOSAL.value)
                                 .values(kind=MemoryKind.FACT.value)).rowcount
        if not changed:
            return False
        token = scope_of(proposal.scope.value, proposal.platform, proposal.channel, proposal.user_id).token
        index_memory(self.s, proposal.id, token, proposal.text)
        self.touch([token])
        return True

    def holds(self, scope: Scope, text: str) -> bool:
        """Return whether the scope already holds this text as a fact or a proposal (any case)."""
        query = select(MemoryRow.id).where(
            MemoryRow.platform == scope.platform, MemoryRow.scope == scope.kind.value,
            MemoryRow.kind.in_([MemoryKind.FACT.value, MemoryKind.PROPOSAL.value]),
            func.lower(MemoryRow.text) == text.lower())
        if scope.kind == ScopeKind.CHANNEL:
            query = query.where(MemoryRow.channel == scope.channel)
        elif scope.kind == ScopeKind.PERSON:
            query = query.where(MemoryRow.user_id == scope.user_id)
        return self.s.scalars(query.limit(1)).first() is not None

    def expire_proposals(self, before: datetime) -> int:
        """Delete the proposals made before this moment that nobody confirmed; return how many went."""
        return self.s.execute(delete(MemoryRow).where(MemoryRow.kind == MemoryKind.PROPOSAL.value,
                                                      MemoryRow.created_at < before)).rowcount or 0

    # -- reads ------------------------------------------------------------------------------

    def versions(self, tokens: Sequence[str]) -> dict[str, str]:
        """Return the version stamp of each of these scopes that has one."""
        rows = self.s.execute(select(MemoryScopeRow.key, MemoryScopeRow.version).where(MemoryScopeRow.key.in_(tokens)))
        return {key: version for key, version in rows}

    def get(self, ids: Iterable[int]) -> list[Memory]:
        """Return the memories with these ids (those that exist)."""
        rows = self.s.scalars(select(MemoryRow).where(MemoryRow.id.in_(list(ids))).order_by(MemoryRow.id)).all()
        return [_memory(row) for row in rows]

    def newest(self, scope: Scope, kind: MemoryKind = MemoryKind.FACT, limit: int = 50) -> list[Memory]:
        """Return the scope's newest memories of a kind, newest first."""
        query = select(MemoryRow).where(MemoryRow.platform == scope.platform, MemoryRow.scope == scope.kind.value,
                                        MemoryRow.kind == kind.value)
        if scope.kind == ScopeKind.CHANNEL:
            query = query.where(MemoryRow.channel == scope.channel)
        elif scope.kind == ScopeKind.PERSON:
            query = query.where(MemoryRow.user_id == scope.user_id)
        rows = self.s.scalars(query.order_by(MemoryRow.id.desc()).limit(limit)).all()
        return [_memory(row) for row in rows]

    def count(self, scope: Scope, kind: MemoryKind) -> int:
        """Return how many memories of a kind the scope holds."""
        query = select(func.count(MemoryRow.id)).where(MemoryRow.platform == scope.platform,
                                                       MemoryRow.scope == scope.kind.value, MemoryRow.kind == kind.value)
        if scope.kind == ScopeKind.CHANNEL:
            query = query.where(MemoryRow.channel == scope.channel)
        return self.s.scalar(query) or 0

    def summary(self, conversation_id: int) -> Memory | None:
        """Return the thread's stored summary, or None."""
        row = self.s.scalars(select(MemoryRow).where(MemoryRow.conversation_id == conversation_id,
                                                     MemoryRow.kind == MemoryKind.SUMMARY.value)
                             .order_by(MemoryRow.id.desc()).limit(1)).one_or_none()
        return _memory(row) if row else None

    def search(self, scopes: Sequence[Scope], query: str, *, kinds: Sequence[MemoryKind] = (MemoryKind.FACT,),
               limit: int = 20, all_words: bool = False, half_life_days: float = HALF_LIFE_DAYS) -> list[Memory]:
        """Return the scopes' memories that match or relate to the query, best first (relevance by age).

        With `all_words` every word must match, and nothing else is returned (`/forget <words>`).
        Otherwise the memories matching every word come first; when they are fewer than `limit`,
        those matching any word are ranked with them (on SQLite the newest `CANDIDATES`); and with semantic search
        on, the memories nearest in meaning are blended in (`_blended`).
        """
        words = search.query_words(query)
        if not words or not scopes:
            return []
        tokens = [scope.token for scope in scopes]
        kind_values = [kind.value for kind in kinds]
        hits = self._matching(tokens, words, kind_values, every_word=True, limit=limit, half_life_days=half_life_days)
        if all_words:
            return hits
        if len(hits) < limit and len(words) > 1:
            found = {hit.id: hit for hit in self._matching(tokens, words, kind_values, every_word=False, limit=limit,
                                                           half_life_days=half_life_days)}
            found.update({hit.id: hit for hit in hits})  # a full match keeps its own (higher) score
            hits = sorted(found.values(), key=lambda hit: (-hit.score, -hit.id))[:limit]
        near = vectors.nearest(self.s, tokens, query, kinds=kind_values, half_life_days=half_life_days)
        if not near:
            return hits
        known = {hit.id: hit for hit in hits}
        known.update({memory.id: memory for memory in self.get(i for i, _ in near if i not in known)})
        return _blended(hits, [known[i] for i, _ in near if i in known], limit)  # a vanished id is dropped

    def _matching(self, tokens: list[str], words: list[str], kinds: list[str], *, every_word: bool, limit: int,
                  half_life_days: float) -> list[Memory]:
        """Return full-text matches of every word (or any), best first (on SQLite among the newest `CANDIDATES`)."""
        values: dict[str, Any] = {"limit": limit, "half": half_life_days, "cap": CANDIDATES}
        kind_names = ", ".join(f":k{i}" for i in range(len(kinds)))
        values.update({f"k{i}": kind for i, kind in enumerate(kinds)})
        columns = ", ".join(f"m.{column.name}" for column in MemoryRow.__table__.columns)
        if self.s.get_bind().dialect.name == "postgresql":
            values["scopes"] = " | ".join(tokens)
            values["q"] = (" & " if every_word else " | ").join(words)
            tsquery = f"to_tsquery('{search.PG_CONFIG}', :q)"
            # Every match is ranked: capping them to the newest (as on SQLite) measured no faster
            # here, and `ORDER BY id DESC LIMIT` led the planner to walk the primary key backwards
            # through thousands of rows instead of reading the GIN index (p95 38 against 16 ms).
            sql = (f"SELECT {columns}, ts_rank(m.search, {tsquery}) / (1 + greatest(0, extract(epoch FROM now()"
                   f" - m.created_at)) / 86400.0 / :half) AS score FROM memories m"
                   f" WHERE m.search @@ (CAST(:scopes AS tsquery) && {tsquery}) AND numnode({tsquery}) > 0"
                   f" AND m.kind IN ({kind_names}) ORDER BY score DESC, m.id DESC LIMIT :limit")
        else:
            scope_terms = " OR ".join(f'"{token}"' for token in tokens)
            matched = (" AND " if every_word else " OR ").join(f'"{word}"' for word in words)
            values["q"] = f"scope : ({scope_terms}) AND body : ({matched})"
            sql = (f"SELECT * FROM (SELECT {columns}, -bm25({FTS_TABLE}, 0.0, 1.0) / (1.0 + max(0.0, julianday('now')"
                   f" - julianday(m.created_at)) / :half) AS score FROM {FTS_TABLE}"
                   f" JOIN memories m ON m.id = {FTS_TABLE}.rowid WHERE {FTS_TABLE} MATCH :q"
                   f" AND m.kind IN ({kind_names}) ORDER BY {FTS_TABLE}.rowid DESC LIMIT :cap)"
                   " ORDER BY score DESC, id DESC LIMIT :limit")
        rows = self.s.execute(text(sql), values).all()
        return [_memory(_RawRow(row), float(row.score)) for row in rows]

    # -- the first build's reads, kept for the exchanges' callers ------------------------------

    def for_conversation(self, conversation_id: int, kind: str | None = None, limit: int = 50) -> list[MemoryItem]:
        """Return the conversation's memories, newest first."""
        query = select(MemoryRow.text, MemoryRow.tokens, MemoryRow.kind).where(MemoryRow.conversation_id == conversation_id)
        if kind:
            query = query.where(MemoryRow.kind == kind)
        rows = self.s.execute(query.order_by(MemoryRow.id.desc()).limit(limit)).all()
        return [MemoryItem(text=text, source=row_kind, tokens=tokens) for text, tokens, row_kind in rows]


def _blended(hits: list[Memory], near: list[Memory], limit: int) -> list[Memory]:
    """Return full-text hits and semantic neighbours in one ranking (reciprocal rank fusion), best first.

    The two scores are on different scales (bm25 or ts_rank against cosine similarity), so each
    list gives its ranks only; each was already weighed by age. A memory in both rises above both.
    """
    fused: dict[int, float] = {}
    memories: dict[int, Memory] = {}
    for ranking in (hits, near):
        for rank, memory in enumerate(ranking, start=1):
            fused[memory.id] = fused.get(memory.id, 0.0) + 1.0 / (RRF_K + rank)
            memories.setdefault(memory.id, memory)
    best = sorted(fused, key=lambda i: (-fused[i], -i))[:limit]
    return [replace(memories[i], score=fused[i]) for i in best]


class _RawRow:
    """A row of a raw search query, read like a `MemoryRow`."""

    def __init__(self, row: Any) -> None:
        for column in MemoryRow.__table__.columns:
            setattr(self, column.name, getattr(row, column.name))
        if isinstance(self.created_at, str):  # raw SQL on SQLite hands the stored text back
            self.created_at = datetime.fromisoformat(self.created_at)


def index_memory(executor: Any, memory_id: int, token: str, body: str, *, vector: bool = True) -> None:
    """Add one memory's text to the search index under its scope's token (a Session or a Connection).

    With semantic search on (`bot.embeddings`), and `vector`, its vector is stored too.
    """
    if _dialect(executor) == "postgresql":
        executor.execute(text(
            f"UPDATE memories SET search = to_tsvector('{search.PG_CONFIG}', :body) || array_to_tsvector(ARRAY[:scope])"
            " WHERE id = :id"), {"id": memory_id, "scope": token, "body": body})
    else:
        executor.execute(text(f"INSERT INTO {FTS_TABLE}(rowid, scope, body) VALUES (:id, :scope, :body)"),
                         {"id": memory_id, "scope": token, "body": body})
    if vector:
        vectors.store(executor, memory_id, token, body)


def thread_entries(session: Session, conversation_id: int, *, after_id: int | None = None,
                   before_id: int | None = None, newest: int | None = None) -> list[HistoryEntry]:
    """Return a thread's messages for a model, oldest first, in one query (agent run statuses left out).

    `after_id` / `before_id` bound the ids (exclusive); `newest` keeps only the last so many.
    """
    statuses = select(AgentRunRow.status_message_id).where(AgentRunRow.conversation_id == conversation_id,
                                                            AgentRunRow.status_message_id.is_not(None))
    query = (select(MessageRow.id, MessageRow.role, MessageRow.text, MessageRow.created_at,
                    ParticipantRow.display_name, ParticipantRow.user_id)
             .outerjoin(ParticipantRow, ParticipantRow.id == MessageRow.participant_id)
             .where(MessageRow.conversation_id == conversation_id,
                    or_(MessageRow.external_id.is_(None), MessageRow.external_id.not_in(statuses))))
    if after_id is not None:
        query = query.where(MessageRow.id > after_id)
    if before_id is not None:
        query = query.where(MessageRow.id < before_id)
    if newest is not None:
        rows = list(reversed(session.execute(query.order_by(MessageRow.id.desc()).limit(newest)).all()))
    else:
        rows = session.execute(query.order_by(MessageRow.id)).all()
    return [HistoryEntry(id=row.id, role=row.role, text=row.text, created_at=row.created_at,
                         author="bot" if row.role == "assistant" else (row.display_name or row.user_id or "someone"))
            for row in rows]


def _unindex(executor: Any, ids: list[int]) -> None:
    """Remove index entries of memories about to be deleted (PostgreSQL's go with their rows)."""
    if _dialect(executor) != "postgresql":
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            names = ", ".join(f":i{i}" for i in range(len(chunk)))
            executor.execute(text(f"DELETE FROM {FTS_TABLE} WHERE rowid IN ({names})"),
                             {f"i{i}": memory_id for i, memory_id in enumerate(chunk)})
        # FTS5 deletes by adding tombstones in a new segment: the forgotten words and their
        # rows' ids stay in the older segments until those are merged. 'optimize' merges them
        # all now, so nothing forgotten can be read back from the index (0.5 s at 100,000
        # memories; forgetting is rare and asked for).
        executor.execute(text(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('optimize')"))


def rebuild(executor: Any) -> int:
    """Index every stored fact and exchange from scratch; return the entries made (migration 0004)."""
    rows = executor.execute(text(
        "SELECT id, scope, platform, channel, user_id, text FROM memories WHERE kind IN ('fact', 'exchange')")).all()
    for memory_id, row_scope, platform, channel, user_id, body in rows:
        # Migration 0004 runs this before 0005 makes `memory_vectors`.
        index_memory(executor, memory_id, scope_of(row_scope, platform, channel, user_id).token, body, vector=False)
    return len(rows)


def _dialect(executor: Any) -> str:
    bind = executor.get_bind() if hasattr(executor, "get_bind") else executor
    return bind.dialect.name
