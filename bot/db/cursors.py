"""The `ChannelCursors` repository: the newest message seen in each channel, and where catch-up reads.

A position is the platform's id of a message, and on both platforms it is a decimal number
that grows with time: a Slack ts ("1700000000.000100") or a Discord snowflake
("1198391912345678901"). It is stored in a sortable form (`sortable`: the whole part padded
to 20 digits, the fraction padded to 6), so the database itself compares two positions, and
the upsert that moves a cursor is one statement that only moves it forward, whichever of
several bot processes writes first. Comparing the platform's own strings would be wrong
("999.1" sorts after "1000.1").
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from bot.db.models import ChannelCursorRow, ConversationRow, MessageRow
from bot.types import utcnow

#: Digits of a position's whole part as stored: a Discord snowflake (a 64-bit number) has 20 at most.
WHOLE_DIGITS = 20
#: Digits of a position's fraction as stored: a Slack ts has exactly 6 (microseconds).
FRACTION_DIGITS = 6


def sortable(position: str) -> str:
    """Return a message id in the stored form, which sorts as the number it is ("5.1" -> "000...005.100000")."""
    whole, dot, fraction = position.strip().partition(".")
    if not whole.isdigit() or (dot and not fraction.isdigit()) or len(whole) > WHOLE_DIGITS \
            or len(fraction) > FRACTION_DIGITS:
        raise ValueError(f"not a message position: {position!r}")
    return f"{int(whole):0{WHOLE_DIGITS}d}" + (f".{fraction.ljust(FRACTION_DIGITS, '0')}" if dot else "")


def readable(stored: str) -> str:
    """Return the platform's own form of a stored position ("000...005.100000" -> "5.100000")."""
    whole, dot, fraction = stored.partition(".")
    return str(int(whole)) + (dot + fraction if dot else "")


def _upsert(dialect: str) -> Any:
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(ChannelCursorRow.__table__)
    return statement.on_conflict_do_update(
        index_elements=["platform", "channel"],
        set_={"last_seen": statement.excluded.last_seen, "updated_at": statement.excluded.updated_at},
        where=ChannelCursorRow.__table__.c.last_seen < statement.excluded.last_seen,
    )


_UPSERTS = {dialect: _upsert(dialect) for dialect in ("sqlite", "postgresql")}


class ChannelCursors:
    """Per platform and channel, the newest message the bot has seen; catch-up after downtime starts there."""

    def __init__(self, session: Session) -> None:
        self.s = session

    def advance(self, platform: str, positions: dict[str, str]) -> None:
        """Move each channel's cursor to the position given, unless it already stands at or past it."""
        if not positions:
            return
        now = utcnow()
        rows = [{"platform": platform, "channel": channel, "last_seen": sortable(position), "updated_at": now}
                for channel, position in positions.items()]
        self.s.execute(_UPSERTS[self.s.get_bind().dialect.name], rows)

    def all(self, platform: str) -> dict[str, str]:
        """Return every channel's cursor on the platform, in the platform's own form."""
        rows = self.s.execute(select(ChannelCursorRow.channel, ChannelCursorRow.last_seen)
                              .where(ChannelCursorRow.platform == platform))
        return {channel: readable(last_seen) for channel, last_seen in rows}

    def active_threads(self, platform: str, channel: str, since: datetime, limit: int) -> list[tuple[str, str | None]]:
        """Return the channel's threads the bot takes part in with a message since `since`, busiest last first.

        Each comes with the platform's id of its first stored message from a person (where the
        bot came in), or None. A direct message's conversation (thread = channel) is not a thread.
        """
        last = func.max(MessageRow.created_at)
        rows = self.s.execute(
            select(ConversationRow.id, ConversationRow.thread)
            .join(MessageRow, MessageRow.conversation_id == ConversationRow.id)
            .where(ConversationRow.platform == platform, ConversationRow.channel == channel,
                   ConversationRow.thread != ConversationRow.channel, ConversationRow.thread != "")
            .group_by(ConversationRow.id, ConversationRow.thread)
            .having(last >= since)
            .order_by(last.desc())
            .limit(limit)).all()
        found = []
        for conversation_id, thread in rows:
            first = self.s.scalars(select(MessageRow.external_id).where(
                MessageRow.conversation_id == conversation_id, MessageRow.role == "user",
                MessageRow.external_id.is_not(None)).order_by(MessageRow.id).limit(1)).first()
            found.append((thread, first))
        return found
