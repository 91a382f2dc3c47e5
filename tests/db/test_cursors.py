"""Channel cursors (catch-up after downtime): forward only, compared as numbers, cheap to note (SQLite and PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

from bot.catch_up import SeenCursors
from bot.db import Database, head_revision
from bot.db.cursors import ChannelCursors, readable, sortable
from bot.db.inbox import Inbox
from bot.types import ThreadRef, utcnow


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    assert database.migrate() == head_revision()
    yield database
    database.close()


def cursors(db: Database, platform: str) -> dict[str, str]:
    with db.reading() as session:
        return ChannelCursors(session).all(platform)


def test_a_cursor_only_moves_forward_whichever_order_the_writes_come_in(db: Database) -> None:
    writes = [
        ("slack", "C1", "999.900000"),
        ("slack", "C1", "1000.000100"),  # later, though "1000..." < "999..." as text
        ("slack", "C1", "999.999999"),  # older: ignored
        ("discord", "G1", "99999999999999999"),
        ("discord", "G1", "100000000000000000"),  # one digit longer: later
        ("discord", "G1", "99999999999999998"),
    ]
    for platform, channel, position in writes:
        with db.session() as session:
            ChannelCursors(session).advance(platform, {channel: position})
    assert cursors(db, "slack") == {"C1": "1000.000100"}
    assert cursors(db, "discord") == {"G1": "100000000000000000"}


def test_positions_round_trip_and_sort_as_numbers() -> None:
    for position in ("1700000000.000100", "5", "1198391912345678901", "18446744073709551615"):
        assert readable(sortable(position)) == position
    assert sortable("999.1") < sortable("1000.000001") < sortable("1000.1")
    for bad in ("", "abc", "1.2.3", "-5", "1" * 21, "1.1234567"):
        with pytest.raises(ValueError):
            sortable(bad)


def test_seen_messages_are_written_in_one_batch_and_noting_one_costs_microseconds(db: Database) -> None:
    seen = SeenCursors(db, "slack", interval_s=3600)  # only `flush` and `close` write here
    started = time.perf_counter()
    for n in range(10_000):
        seen.saw(f"C{n % 50}", f"1700000000.{n:06d}")
    per_event_s = (time.perf_counter() - started) / 10_000
    seen.saw("C1", "not a ts")  # a malformed payload's id is ignored, never raised
    seen.saw(None, "1700000000.000001")
    assert cursors(db, "slack") == {}  # nothing written per event
    assert per_event_s < 100e-6, f"noting a message took {per_event_s * 1e6:.1f} µs"
    seen.close()
    stored = cursors(db, "slack")
    assert len(stored) == 50 and stored["C0"] == "1700000000.009950"
    assert seen.snapshot() == stored


def test_active_threads_are_the_channels_recent_threads_with_where_the_bot_came_in(db: Database) -> None:
    inbox = Inbox(db.engine)
    now = utcnow()

    def say(where: ThreadRef, external_id: str, at_hours_ago: float) -> None:
        conversation = inbox.conversation(where, "")
        with inbox.transaction() as cursor:
            inbox.add_message(cursor, conversation.id, "user", "hi", external_id=external_id,
                              created_at=now - timedelta(hours=at_hours_ago))

    say(ThreadRef("slack", "C1", "100.000001"), "100.000001", 30)  # quiet for more than a day
    say(ThreadRef("slack", "C1", "200.000001"), "200.000005", 3)  # the bot came in mid-thread
    say(ThreadRef("slack", "C1", "200.000001"), "200.000009", 2)
    say(ThreadRef("slack", "C1", "300.000001"), "300.000001", 1)
    say(ThreadRef("slack", "C2", "400.000001"), "400.000001", 1)  # another channel
    say(ThreadRef("discord", "D1", "D1"), "500", 1)  # a direct message is no thread
    with db.reading() as session:
        found = ChannelCursors(session).active_threads("slack", "C1", now - timedelta(days=1), limit=50)
        assert ChannelCursors(session).active_threads("discord", "D1", now - timedelta(days=1), limit=50) == []
    assert found == [("300.000001", "300.000001"), ("200.000001", "200.000005")]
