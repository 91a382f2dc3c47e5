"""The tables: one per idea, linked by foreign keys (no JSON blobs in the messages table)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from bot.types import utcnow


class Base(DeclarativeBase):
    pass


class ConversationRow(Base):
    __tablename__ = "conversations"
    __table_args__ = (UniqueConstraint("platform", "channel", "thread", name="uq_conversation_thread"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(128))
    thread: Mapped[str] = mapped_column(String(128))
    title: Mapped[str] = mapped_column(String(200), default="")
    #: The coding agent's session (opencode's sessionID) that follow-ups continue.
    agent_session_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    forked_from_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"), nullable=True)
    #: When the thread's earlier messages (before the bot was mentioned) were read from the platform.
    history_fetched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    messages: Mapped[list[MessageRow]] = relationship(back_populates="conversation", order_by="MessageRow.id")


class ParticipantRow(Base):
    __tablename__ = "participants"
    __table_args__ = (UniqueConstraint("conversation_id", "user_id", name="uq_participant"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(String(128))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class MessageRow(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("conversation_id", "external_id", name="uq_message_external"),
        Index("ix_messages_conversation", "conversation_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    participant_id: Mapped[int | None] = mapped_column(ForeignKey("participants.id"), nullable=True)
    #: "user" for people, "assistant" for the bot's own replies.
    role: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    #: For the bot's replies: the message it answers, so a redelivered job answers once.
    reply_to_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"), nullable=True, index=True)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    conversation: Mapped[ConversationRow] = relationship(back_populates="messages")
    participant: Mapped[ParticipantRow | None] = relationship(lazy="joined")
    decision: Mapped[RouteDecisionRow | None] = relationship(back_populates="message", uselist=False, lazy="joined")


class RouteDecisionRow(Base):
    """Why the bot did what it did with a message: one row per decided message."""

    __tablename__ = "route_decisions"

    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True)
    route: Mapped[str] = mapped_column(String(16))
    stage: Mapped[str] = mapped_column(String(32))
    confidence: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(String(500))
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    message: Mapped[MessageRow] = relationship(back_populates="decision")


class AgentRunRow(Base):
    __tablename__ = "agent_runs"
    __table_args__ = (Index("ix_agent_runs_conversation_state", "conversation_id", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    request_message_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id"), nullable=True, unique=True
    )
    agent: Mapped[str] = mapped_column(String(64))
    prompt: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    requested_by: Mapped[str] = mapped_column(String(200), default="")
    cancelled_by: Mapped[str] = mapped_column(String(200), default="")
    status_message_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    session_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    worker: Mapped[str] = mapped_column(String(200), default="")
    error: Mapped[str] = mapped_column(Text, default="")
    tokens_in: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_out: Mapped[int] = mapped_column(BigInteger, default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: Refreshed by the worker while the run is alive; a stale one means the worker died.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: 1 for the first try; 2 for the one retry of a run lost with its worker (`agent.retry_lost_runs`).
    attempt: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    #: False from the run's end until its status message says how it ended (`workers.reaper`).
    final_shown: Mapped[bool] = mapped_column(Boolean, default=False, server_default=true())


class RunEventRow(Base):
    __tablename__ = "run_events"
    __table_args__ = (UniqueConstraint("run_id", "seq", name="uq_run_event_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("agent_runs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(16), default="")
    text: Mapped[str] = mapped_column(Text, default="")
    tokens_in: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_out: Mapped[int] = mapped_column(BigInteger, default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    #: The agent's own event as it came, for the downloadable log.
    raw: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ResourceContentRow(Base):
    """The bytes of a resource, kept once per sha256: small text inline, the rest as a blob file."""

    __tablename__ = "resource_contents"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str] = mapped_column(String(200))
    #: The content itself when it is UTF-8 text of at most `bot.db.blobs.INLINE_TEXT_LIMIT` bytes.
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: True when the bytes live in the blob store (`blobs/ab/<sha256>` under the data dir).
    in_blob: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ResourceRow(Base):
    """A file, diff, log, image or answer an agent made, uploaded into the thread and indexed here.

    Searched through `resources_fts` (an FTS5 table, SQLite) or a `search` tsvector column with
    a GIN index (PostgreSQL); both are made by migration 0003 and kept by `bot.db.search`, and
    neither is mapped here: SQLAlchemy never reads or writes them.
    """

    __tablename__ = "resources"
    __table_args__ = (Index("ix_resources_conversation", "conversation_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("agent_runs.id"), nullable=True)
    path: Mapped[str] = mapped_column(String(1000))
    kind: Mapped[str] = mapped_column(String(32), default="file")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    platform_file_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: The last part of the path, so `by_path` finds `report.md` for `docs/report.md`.
    name: Mapped[str] = mapped_column(String(255), default="", server_default="")
    media_type: Mapped[str] = mapped_column(String(200), default="application/octet-stream",
                                            server_default="application/octet-stream")
    requested_by: Mapped[str] = mapped_column(String(200), default="", server_default="")
    permalink: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    #: The stored bytes; None for rows indexed before contents were kept (revision 0002).
    content_sha256: Mapped[str | None] = mapped_column(
        ForeignKey("resource_contents.sha256", name="fk_resources_content_sha256"), nullable=True)


class ResourceShareRow(Base):
    """One time a resource was posted again, into this or another thread."""

    __tablename__ = "resource_shares"
    __table_args__ = (Index("ix_resource_shares_resource", "resource_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("resources.id", ondelete="CASCADE"))
    platform: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(128))
    thread: Mapped[str | None] = mapped_column(String(128), nullable=True)
    shared_by: Mapped[str] = mapped_column(String(200), default="")
    platform_message_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class MemoryRow(Base):
    """One thing the bot keeps: a fact (person, channel or team), an exchange, a thread summary.

    `scope` says who it applies to: `person` (platform + `user_id`), `channel` (platform +
    `channel`), `team` (the whole platform) or `thread` (its `conversation_id`: summaries).
    Searched through `memories_fts` (FTS5, SQLite) or the `search` tsvector column with a GIN
    index (PostgreSQL), made by migration 0004 and kept by `bot.db.memories`; neither is mapped.
    """

    __tablename__ = "memories"
    __table_args__ = (
        Index("ix_memories_conversation", "conversation_id"),
        Index("ix_memories_place", "platform", "scope", "channel", "kind", "id"),
        Index("ix_memories_user", "platform", "user_id"),
        Index("ix_memories_author", "platform", "author_id"),
        Index("ix_memories_platform_message", "platform", "platform_message_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"), nullable=True)
    source_message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"), nullable=True)
    kind: Mapped[str] = mapped_column(String(32), default="note")
    text: Mapped[str] = mapped_column(Text)
    tokens: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    scope: Mapped[str] = mapped_column(String(16), default="channel", server_default="channel")
    platform: Mapped[str] = mapped_column(String(32), default="", server_default="")
    channel: Mapped[str] = mapped_column(String(128), default="", server_default="")
    #: The person a `person` memory is about.
    user_id: Mapped[str] = mapped_column(String(128), default="", server_default="")
    #: Who said it (the source), with their name as it was then.
    author_id: Mapped[str] = mapped_column(String(128), default="", server_default="")
    author_name: Mapped[str] = mapped_column(String(200), default="", server_default="")
    #: A thread summary covers the thread's messages up to this id.
    through_message_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: The chat message that proposed this memory (kind `proposal`): a ✅ on it keeps it.
    platform_message_id: Mapped[str | None] = mapped_column(String(128), nullable=True)


class MemoryVectorRow(Base):
    """A memory's local-embedding vector (float32 bytes), tagged with its scope's index token."""

    __tablename__ = "memory_vectors"
    __table_args__ = (Index("ix_memory_vectors_scope", "scope", "memory_id"),)

    memory_id: Mapped[int] = mapped_column(ForeignKey("memories.id", ondelete="CASCADE"), primary_key=True)
    scope: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(64))
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class MemoryScopeRow(Base):
    """A version stamp per memory scope, changed by every write: caches compare it in one query."""

    __tablename__ = "memory_scopes"

    #: The scope's index token (`bot.memory.Scope.token`).
    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    version: Mapped[str] = mapped_column(String(32))
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ChannelCursorRow(Base):
    """The newest message the bot has seen in a channel (a Slack ts, a Discord message id): catch-up starts there."""

    __tablename__ = "channel_cursors"

    platform: Mapped[str] = mapped_column(String(32), primary_key=True)
    channel: Mapped[str] = mapped_column(String(128), primary_key=True)
    last_seen: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ProcessedEventRow(Base):
    """Platform event ids already handled: retried deliveries do nothing twice."""

    __tablename__ = "processed_events"
    __table_args__ = (UniqueConstraint("platform", "event_id", name="uq_processed_event"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
