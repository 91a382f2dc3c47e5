"""Repositories: the only code that knows the tables. Each works inside a caller's session.

    with engine.db.session() as session:
        conversation = Conversations(session).ensure(where)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.db.memories import Memories  # noqa: F401 - re-exported: the repositories live together
from bot.db.models import (
    AgentRunRow,
    ConversationRow,
    MessageRow,
    ParticipantRow,
    ProcessedEventRow,
    RouteDecisionRow,
    RunEventRow,
)
from bot.db.resources import Resources  # noqa: F401 - re-exported: the repositories live together
from bot.memory import in_order_said
from bot.types import (
    AgentRun,
    Conversation,
    EventKind,
    HistoryEntry,
    Route,
    RouteDecision,
    RunEvent,
    RunState,
    Spend,
    ThreadRef,
    utcnow,
)


def _conversation(row: ConversationRow) -> Conversation:
    return Conversation(
        id=row.id,
        where=ThreadRef(row.platform, row.channel, row.thread),
        title=row.title,
        agent_session_id=row.agent_session_id,
        forked_from_id=row.forked_from_id,
    )


def _run(row: AgentRunRow) -> AgentRun:
    return AgentRun(
        id=row.id,
        conversation_id=row.conversation_id,
        agent=row.agent,
        prompt=row.prompt,
        state=RunState(row.state),
        requested_by=row.requested_by,
        status_message_id=row.status_message_id,
        session_id=row.session_id,
        error=row.error,
        request_message_id=row.request_message_id,
        job_id=row.job_id,
        cancelled_by=row.cancelled_by,
        worker=row.worker,
        tokens_in=row.tokens_in,
        tokens_out=row.tokens_out,
        cost=row.cost,
        created_at=row.created_at,
        started_at=row.started_at,
        heartbeat_at=row.heartbeat_at,
        finished_at=row.finished_at,
    )


def _event(row: RunEventRow) -> RunEvent:
    return RunEvent(EventKind(row.kind), name=row.name, text=row.text, status=row.status, tokens_in=row.tokens_in,
                    tokens_out=row.tokens_out, cost=row.cost, raw=row.raw or {}, at=row.created_at)


class Conversations:
    """Threads the bot takes part in, keyed by platform, channel and thread."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def ensure(self, where: ThreadRef, title: str = "") -> Conversation:
        """Return the conversation for the thread, creating it on first sight."""
        row = self._row(where)
        if row is None:
            try:
                with self.s.begin_nested():
                    row = ConversationRow(
                        platform=where.platform, channel=where.channel, thread=where.thread, title=title[:200]
                    )
                    self.s.add(row)
            except IntegrityError:  # another dispatch created it a moment ago
                row = self._row(where)
                assert row is not None
        return _conversation(row)

    def find(self, where: ThreadRef) -> Conversation | None:
        """Return the conversation for the thread, or None if the bot has never seen it."""
        row = self._row(where)
        return _conversation(row) if row else None

    def get(self, conversation_id: int) -> Conversation:
        """Return the conversation with this id."""
        return _conversation(self.s.get_one(ConversationRow, conversation_id))

    def in_channel(self, platform: str, channel: str, limit: int = 20) -> list[tuple[Conversation, int]]:
        """Return the channel's most recently active conversations with their message counts."""
        counts = (
            select(MessageRow.conversation_id, func.count(MessageRow.id).label("n"))
            .group_by(MessageRow.conversation_id)
            .subquery()
        )
        rows = self.s.execute(
            select(ConversationRow, func.coalesce(counts.c.n, 0))
            .outerjoin(counts, counts.c.conversation_id == ConversationRow.id)
            .where(ConversationRow.platform == platform, ConversationRow.channel == channel)
            .order_by(ConversationRow.updated_at.desc(), ConversationRow.id.desc())
            .limit(limit)
        ).all()
        return [(_conversation(row), count) for row, count in rows]

    def get_or_none(self, conversation_id: int) -> Conversation | None:
        """Return the conversation with this id, or None (it is gone)."""
        row = self.s.get(ConversationRow, conversation_id)
        return _conversation(row) if row else None

    def create_fork(self, parent_id: int, where: ThreadRef, title: str = "",
                    agent_session_id: str | None = None) -> Conversation:
        """Create the conversation of a fork of `parent_id` in a new thread; return it.

        `agent_session_id` is the parent's agent session the fork's first run forks.
        """
        row = ConversationRow(platform=where.platform, channel=where.channel, thread=where.thread, title=title[:200],
                              forked_from_id=parent_id, agent_session_id=agent_session_id)
        self.s.add(row)
        self.s.flush()
        return _conversation(row)

    def forks_of(self, conversation_id: int) -> list[Conversation]:
        """Return the conversation's forks, oldest first (fork 1 is the first made)."""
        rows = self.s.scalars(
            select(ConversationRow).where(ConversationRow.forked_from_id == conversation_id).order_by(ConversationRow.id)
        )
        return [_conversation(row) for row in rows]

    def set_agent_session(self, conversation_id: int, session_id: str | None) -> None:
        """Remember the agent session that the conversation's follow-ups continue."""
        self.s.execute(
            update(ConversationRow).where(ConversationRow.id == conversation_id).values(agent_session_id=session_id)
        )

    def claim_history(self, conversation_id: int) -> bool:
        """Mark the thread's platform history as read; return False when it was marked already.

        A read first, so the usual answer (read long ago) takes no write lock; then one conditional UPDATE.
        """
        fetched = self.s.scalar(select(ConversationRow.history_fetched_at).where(ConversationRow.id == conversation_id))
        if fetched is not None:
            return False
        return bool(self.s.execute(update(ConversationRow).where(
            ConversationRow.id == conversation_id, ConversationRow.history_fetched_at.is_(None))
            .values(history_fetched_at=utcnow())).rowcount)

    def release_history(self, conversation_id: int) -> None:
        """Unmark the thread's platform history, so the next message reads it again."""
        self.s.execute(update(ConversationRow).where(ConversationRow.id == conversation_id)
                       .values(history_fetched_at=None))

    def _row(self, where: ThreadRef) -> ConversationRow | None:
        return self.s.scalars(
            select(ConversationRow).where(
                ConversationRow.platform == where.platform,
                ConversationRow.channel == where.channel,
                ConversationRow.thread == where.thread,
            )
        ).one_or_none()


class Participants:
    """People who have written in a conversation."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def touch(self, conversation_id: int, user_id: str, display_name: str = "") -> int:
        """Return the participant's id, recording them (or their new name) as seen now."""
        row = self.s.scalars(
            select(ParticipantRow).where(
                ParticipantRow.conversation_id == conversation_id, ParticipantRow.user_id == user_id
            )
        ).one_or_none()
        if row is None:
            row = ParticipantRow(conversation_id=conversation_id, user_id=user_id, display_name=display_name)
            self.s.add(row)
            self.s.flush()
        else:
            row.last_seen_at = utcnow()
            if display_name and display_name != row.display_name:
                row.display_name = display_name
        return row.id

    def in_conversation(self, conversation_id: int) -> list[tuple[str, str]]:
        """Return (user id, display name) of everyone who has written in the conversation."""
        rows = self.s.execute(
            select(ParticipantRow.user_id, ParticipantRow.display_name)
            .where(ParticipantRow.conversation_id == conversation_id)
            .order_by(ParticipantRow.first_seen_at)
        ).all()
        return [(user_id, name) for user_id, name in rows]


class Messages:
    """Reads of every message of every conversation, the bot's own replies included.

    `bot.db.inbox.Inbox` is their one writer (and their decisions'), on compiled statements.
    """

    def __init__(self, session: Session) -> None:
        self.s = session

    def unposted(self, after: datetime, prefix: str) -> list[tuple[int, int, str, str, datetime]]:
        """Return the bot's replies stored since `after` whose external id is still a placeholder
        starting with `prefix` (not posted yet): id, conversation id, text, placeholder, when stored."""
        rows = self.s.execute(
            select(MessageRow.id, MessageRow.conversation_id, MessageRow.text, MessageRow.external_id,
                   MessageRow.created_at)
            .where(MessageRow.role == "assistant", MessageRow.created_at > after,
                   MessageRow.external_id.startswith(prefix, autoescape=True))
            .order_by(MessageRow.id))
        return [tuple(row) for row in rows]

    def unanswered(self, after: datetime, before: datetime) -> list[int]:
        """Return the ids of messages routed to a job (a direct answer or the agent) between `after` and
        `before` that have no reply and no run: their job never finished, or was lost."""
        reply = MessageRow.__table__.alias("reply")
        rows = self.s.execute(
            select(MessageRow.id)
            .join(RouteDecisionRow, RouteDecisionRow.message_id == MessageRow.id)
            .where(MessageRow.role == "user", RouteDecisionRow.route.in_(("direct", "agent")),
                   MessageRow.created_at > after, MessageRow.created_at < before,
                   ~select(reply.c.id).where(reply.c.reply_to_id == MessageRow.id).exists(),
                   ~select(AgentRunRow.id).where(AgentRunRow.request_message_id == MessageRow.id).exists())
            .order_by(MessageRow.id))
        return [row[0] for row in rows]

    def answered(self, message_id: int) -> bool:
        """Return whether the bot has already replied to this message."""
        return self.s.scalar(select(MessageRow.id).where(MessageRow.reply_to_id == message_id).limit(1)) is not None

    def decision(self, message_id: int) -> RouteDecision | None:
        """Return the stored routing decision of a message, or None."""
        row = self.s.get(RouteDecisionRow, message_id)
        if row is None:
            return None
        return RouteDecision(Route(row.route), row.stage, row.confidence, row.reason)

    def get(self, message_id: int) -> tuple[HistoryEntry, int, str]:
        """Return the message, its conversation id and its author's user id."""
        row = self.s.get_one(MessageRow, message_id)
        user_id = row.participant.user_id if row.participant else ""
        return _entry(row), row.conversation_id, user_id

    def recent(self, conversation_id: int, limit: int = 20, before_id: int | None = None, *,
               without_run_status: bool = False) -> list[HistoryEntry]:
        """Return the conversation's last `limit` messages, oldest first.

        With `without_run_status`, agent runs' status messages are left out: they are progress
        for people, noise for a model.
        """
        query = select(MessageRow).where(MessageRow.conversation_id == conversation_id)
        if before_id is not None:
            query = query.where(MessageRow.id < before_id)
        if without_run_status:
            status_ids = select(AgentRunRow.status_message_id).where(
                AgentRunRow.conversation_id == conversation_id, AgentRunRow.status_message_id.is_not(None))
            query = query.where(or_(MessageRow.external_id.is_(None), MessageRow.external_id.not_in(status_ids)))
        rows = self.s.scalars(query.order_by(MessageRow.id.desc()).limit(limit)).all()
        return in_order_said(_entry(row) for row in rows)  # a thread's earlier messages, read later, first

    def first_platform_id(self, conversation_id: int) -> str | None:
        """Return the platform's id of the conversation's first stored message from a person, or None."""
        return self.s.scalars(select(MessageRow.external_id).where(
            MessageRow.conversation_id == conversation_id, MessageRow.role == "user",
            MessageRow.external_id.is_not(None)).order_by(MessageRow.id).limit(1)).first()

    def count(self, conversation_id: int) -> int:
        """Return how many messages the conversation holds."""
        return self.s.scalar(select(func.count(MessageRow.id)).where(MessageRow.conversation_id == conversation_id)) or 0


def _entry(row: MessageRow) -> HistoryEntry:
    if row.role == "assistant":
        author = "bot"
    elif row.participant is not None:
        author = row.participant.display_name or row.participant.user_id
    else:
        author = "someone"
    return HistoryEntry(
        id=row.id,
        role=row.role,
        author=author,
        text=row.text,
        created_at=row.created_at,
        route=row.decision.route if row.decision else None,
    )


class Runs:
    """Agent runs and their events."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def create(
        self, conversation_id: int, agent: str, prompt: str, *, requested_by: str = "", request_message_id: int | None = None
    ) -> tuple[AgentRun, bool]:
        """Create a queued run; return it and whether it is new (one run per request message)."""
        if request_message_id is not None:
            existing = self.s.scalars(
                select(AgentRunRow).where(AgentRunRow.request_message_id == request_message_id)
            ).one_or_none()
            if existing is not None:
                return _run(existing), False
        row = AgentRunRow(
            conversation_id=conversation_id,
            agent=agent,
            prompt=prompt,
            requested_by=requested_by,
            request_message_id=request_message_id,
            state=RunState.QUEUED.value,
        )
        self.s.add(row)
        self.s.flush()
        return _run(row), True

    def get(self, run_id: int) -> AgentRun:
        """Return the run with this id."""
        return _run(self.s.get_one(AgentRunRow, run_id))

    def get_or_none(self, run_id: int) -> AgentRun | None:
        """Return the run with this id, or None."""
        row = self.s.get(AgentRunRow, run_id)
        return _run(row) if row else None

    def spend(self, since: datetime, *, platform: str | None = None, channel: str | None = None,
              user_id: str | None = None, by: str | None = None) -> list[Spend]:
        """Return runs, tokens and cost of the runs created since then, filtered, grouped `by` person or channel."""
        person = ParticipantRow.user_id
        where_channel = ConversationRow.platform + ":" + ConversationRow.channel
        keys = {"person": [ConversationRow.platform, person], "channel": [where_channel]}.get(by or "", [])
        tokens = func.coalesce(func.sum(AgentRunRow.tokens_in + AgentRunRow.tokens_out), 0)
        query = (select(*keys, func.count(AgentRunRow.id), tokens, func.coalesce(func.sum(AgentRunRow.cost), 0.0))
                 .join(ConversationRow, ConversationRow.id == AgentRunRow.conversation_id)
                 .outerjoin(MessageRow, MessageRow.id == AgentRunRow.request_message_id)
                 .outerjoin(ParticipantRow, ParticipantRow.id == MessageRow.participant_id)
                 .where(AgentRunRow.created_at >= since))
        if platform is not None:
            query = query.where(ConversationRow.platform == platform)
        if channel is not None:
            query = query.where(ConversationRow.channel == channel)
        if user_id is not None:
            query = query.where(person == user_id)
        if keys:
            query = query.group_by(*keys)
        spends = []
        for row in self.s.execute(query).all():
            label = ":".join(str(part) for part in row[:len(keys)])
            spends.append(Spend(label, int(row[-3]), int(row[-2]), float(row[-1])))
        return spends

    def requester_id(self, run_id: int) -> str:
        """Return the platform user id of who asked for the run ("" if unknown)."""
        user_id = self.s.scalar(
            select(ParticipantRow.user_id)
            .join(MessageRow, MessageRow.participant_id == ParticipantRow.id)
            .join(AgentRunRow, AgentRunRow.request_message_id == MessageRow.id)
            .where(AgentRunRow.id == run_id))
        return user_id or ""

    def transition(self, run_id: int, to: RunState, *, allowed_from: tuple[RunState, ...], **values: Any) -> bool:
        """Move the run to `to` if it is in one of `allowed_from`; return whether it moved.

        A single conditional UPDATE, so two workers racing for a run cannot both win.
        """
        if to == RunState.RUNNING:
            values.setdefault("started_at", utcnow())
        if to.is_final:
            values.setdefault("finished_at", utcnow())
        result = self.s.execute(
            update(AgentRunRow)
            .where(AgentRunRow.id == run_id, AgentRunRow.state.in_([s.value for s in allowed_from]))
            .values(state=to.value, **values)
        )
        return result.rowcount == 1

    def set(self, run_id: int, **values: Any) -> None:
        """Update plain columns of the run (status message id, session id, tokens)."""
        self.s.execute(update(AgentRunRow).where(AgentRunRow.id == run_id).values(**values))

    def add_event(self, run_id: int, seq: int, event: RunEvent) -> bool:
        """Store one event under its sequence number; return False if it was stored already."""
        exists = self.s.scalar(select(RunEventRow.id).where(RunEventRow.run_id == run_id, RunEventRow.seq == seq))
        if exists is not None:
            return False
        self.s.add(
            RunEventRow(
                run_id=run_id,
                seq=seq,
                kind=event.kind.value,
                name=event.name[:64],
                status=event.status[:16],
                text=event.text,
                tokens_in=event.tokens_in,
                tokens_out=event.tokens_out,
                cost=event.cost,
                raw=event.raw or None,
                created_at=event.at,
            )
        )
        return True

    def events(self, run_id: int) -> list[RunEvent]:
        """Return the run's events in order."""
        rows = self.s.scalars(select(RunEventRow).where(RunEventRow.run_id == run_id).order_by(RunEventRow.seq))
        return [_event(row) for row in rows]

    def active(self, conversation_id: int) -> list[AgentRun]:
        """Return the conversation's queued and running runs, oldest first."""
        rows = self.s.scalars(
            select(AgentRunRow)
            .where(
                AgentRunRow.conversation_id == conversation_id,
                AgentRunRow.state.in_([RunState.QUEUED.value, RunState.RUNNING.value]),
            )
            .order_by(AgentRunRow.id)
        )
        return [_run(row) for row in rows]

    def in_conversation(self, conversation_id: int, limit: int = 10) -> list[AgentRun]:
        """Return the conversation's latest runs, newest first."""
        rows = self.s.scalars(
            select(AgentRunRow).where(AgentRunRow.conversation_id == conversation_id).order_by(AgentRunRow.id.desc()).limit(limit)
        )
        return [_run(row) for row in rows]

    def requeue_lost(self, run_id: int) -> bool:
        """Put a running run back in the queue as its second attempt; False if it is not running or was retried.

        One conditional UPDATE, so two reapers cannot both retry it.
        """
        result = self.s.execute(
            update(AgentRunRow)
            .where(AgentRunRow.id == run_id, AgentRunRow.state == RunState.RUNNING.value, AgentRunRow.attempt == 1)
            .values(state=RunState.QUEUED.value, attempt=2, worker="", started_at=None, heartbeat_at=None)
        )
        return result.rowcount == 1

    def stale(self, heartbeat_before: datetime) -> list[AgentRun]:
        """Return running runs whose worker has not reported since `heartbeat_before`."""
        rows = self.s.scalars(
            select(AgentRunRow).where(
                AgentRunRow.state == RunState.RUNNING.value,
                func.coalesce(AgentRunRow.heartbeat_at, AgentRunRow.started_at) < heartbeat_before,
            )
        )
        return [_run(row) for row in rows]

    def final_not_shown(self, finished_after: datetime) -> list[AgentRun]:
        """Return the runs ended since `finished_after` whose status message does not say so yet, oldest first."""
        rows = self.s.scalars(select(AgentRunRow).where(
            AgentRunRow.final_shown.is_(False), AgentRunRow.finished_at > finished_after,
            AgentRunRow.state.in_([state.value for state in RunState if state.is_final])).order_by(AgentRunRow.id))
        return [_run(row) for row in rows]

    def claim_final_showing(self, run_id: int) -> bool:
        """Mark a run's end as shown if nobody had; return whether this call did (so one process shows it)."""
        result = self.s.execute(update(AgentRunRow).where(AgentRunRow.id == run_id, AgentRunRow.final_shown.is_(False))
                                .values(final_shown=True))
        return result.rowcount == 1

    def in_state(self, state: RunState) -> list[AgentRun]:
        """Return every run in the given state, oldest first."""
        rows = self.s.scalars(select(AgentRunRow).where(AgentRunRow.state == state.value).order_by(AgentRunRow.id))
        return [_run(row) for row in rows]

    def count_by_state(self) -> dict[RunState, int]:
        """Return how many runs are in each state (every state, zero included)."""
        counts = dict(self.s.execute(select(AgentRunRow.state, func.count()).group_by(AgentRunRow.state)).tuples().all())
        return {state: int(counts.get(state.value, 0)) for state in RunState}

    def oldest_running(self) -> AgentRun | None:
        """Return the running run that started first, or None when none runs."""
        row = self.s.scalars(select(AgentRunRow).where(AgentRunRow.state == RunState.RUNNING.value)
                             .order_by(func.coalesce(AgentRunRow.started_at, AgentRunRow.created_at), AgentRunRow.id)
                             .limit(1)).first()
        return _run(row) if row is not None else None


class ProcessedEvents:
    """A durable record of platform event ids, so retried deliveries do nothing twice."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def claim(self, platform: str, event_id: str) -> bool:
        """Record the event id; return True the first time, False for every redelivery."""
        try:
            with self.s.begin_nested():
                self.s.add(ProcessedEventRow(platform=platform, event_id=event_id))
        except IntegrityError:
            return False
        return True
