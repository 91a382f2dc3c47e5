"""Repositories on SQLite and on a real PostgreSQL server (every test runs on both)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from bot.db import Database, head_revision
from bot.db.inbox import Inbox
from bot.db.repositories import (
    Conversations,
    Memories,
    Messages,
    Participants,
    ProcessedEvents,
    Resources,
    Runs,
)
from bot.errors import DuplicateEvent
from bot.types import EventKind, Route, RouteDecision, RunEvent, RunState, ThreadRef

WHERE = ThreadRef("slack", "C042", "1700000000.000100")


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    assert database.migrate() == head_revision()
    yield database
    database.close()


def test_migrations_create_one_table_per_idea(db: Database) -> None:
    assert {"conversations", "participants", "messages", "route_decisions", "agent_runs", "run_events",
            "resources", "memories", "processed_events", "alembic_version"} <= set(db.check())
    assert db.migrate() == head_revision()  # running again changes nothing


def add(db: Database, conversation_id: int, role: str, text: str, **values) -> int:
    """Store one message through the one writer, in a transaction of its own; return its id."""
    inbox = Inbox(db.engine)
    with inbox.transaction() as cursor:
        return inbox.add_message(cursor, conversation_id, role, text, **values)


def test_a_thread_maps_to_one_conversation_with_its_participants_and_messages(db: Database) -> None:
    inbox = Inbox(db.engine)
    conversation = inbox.conversation(WHERE, "fix the flaky test")
    ana = inbox.participant(conversation.id, "U1", "ana")
    bo = inbox.participant(conversation.id, "U2", "bo")
    with inbox.transaction() as cursor:
        first = inbox.add_message(cursor, conversation.id, "user", "fix the flaky test", external_id="1.1",
                                  participant_id=ana)
        inbox.add_message(cursor, conversation.id, "user", "+1", external_id="1.2", participant_id=bo)
        inbox.record_decision(cursor, first, RouteDecision(Route.AGENT, "heuristic", 0.97, "action verb"))
    with inbox.transaction() as cursor:
        inbox.replace_decision(cursor, first, RouteDecision(Route.DIRECT, "llm", 0.9, "an opinion"))
    with db.session() as s:
        assert Conversations(s).ensure(WHERE).id == conversation.id
        history = Messages(s).recent(conversation.id)
        assert [(e.author, e.text, e.route) for e in history] == [("ana", "fix the flaky test", "direct"), ("bo", "+1", None)]
        assert Participants(s).in_conversation(conversation.id) == [("U1", "ana"), ("U2", "bo")]
        assert Messages(s).decision(first) == RouteDecision(Route.DIRECT, "llm", 0.9, "an opinion")
        assert Messages(s).count(conversation.id) == 2
    with pytest.raises(DuplicateEvent), inbox.transaction() as cursor:  # a redelivery is refused whole
        inbox.add_message(cursor, conversation.id, "user", "fix the flaky test", external_id="1.1")
    assert inbox.find(conversation.id, "1.1") == first


def test_a_failed_transaction_leaves_no_half_written_rows(db: Database) -> None:
    with pytest.raises(RuntimeError):
        with db.session() as s:
            Conversations(s).ensure(WHERE)
            raise RuntimeError("crash between writes")
    with db.session() as s:
        assert Conversations(s).find(WHERE) is None
    inbox = Inbox(db.engine)
    conversation = inbox.conversation(WHERE, "")
    with pytest.raises(RuntimeError), inbox.transaction() as cursor:
        message_id = inbox.add_message(cursor, conversation.id, "user", "half")
        inbox.record_decision(cursor, message_id, RouteDecision(Route.AGENT, "heuristic", 0.9, "verb"))
        raise RuntimeError("crash between the message and its reply")
    with db.reading() as s:
        assert Messages(s).count(conversation.id) == 0 and Messages(s).decision(message_id) is None


def test_concurrent_first_messages_create_one_conversation(db: Database) -> None:
    ids: list[int] = []
    errors: list[BaseException] = []

    def first_message() -> None:
        try:
            with db.session() as s:
                ids.append(Conversations(s).ensure(WHERE).id)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=first_message) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(ids)) == 1


def test_runs_move_through_states_once_and_keep_their_events(db: Database) -> None:
    with db.session() as s:
        conversation = Conversations(s).ensure(WHERE)
    request = add(db, conversation.id, "user", "add a README")
    with db.session() as s:
        run, created = Runs(s).create(conversation.id, "opencode", "add a README", requested_by="ana",
                                      request_message_id=request)
        assert created and run.state == RunState.QUEUED
        same, created_again = Runs(s).create(conversation.id, "opencode", "add a README", request_message_id=request)
        assert same.id == run.id and not created_again
    with db.session() as s:
        runs = Runs(s)
        assert runs.transition(run.id, RunState.RUNNING, allowed_from=(RunState.QUEUED,))
        assert not runs.transition(run.id, RunState.RUNNING, allowed_from=(RunState.QUEUED,))  # a second worker loses
        assert runs.add_event(run.id, 1, RunEvent(EventKind.TOOL, name="write", text="README.md", status="completed"))
        assert not runs.add_event(run.id, 1, RunEvent(EventKind.TOOL, name="write", text="README.md"))
        runs.add_event(run.id, 2, RunEvent(EventKind.TOKENS, tokens_in=1200, tokens_out=80, cost=0.01))
        assert [r.id for r in runs.active(conversation.id)] == [run.id]
        assert runs.transition(run.id, RunState.DONE, allowed_from=(RunState.RUNNING,), tokens_in=1200)
    with db.session() as s:
        runs = Runs(s)
        assert runs.get(run.id).state == RunState.DONE
        assert runs.get(run.id).finished_at is not None and runs.get(run.id).tokens_in == 1200
        assert [(e.kind, e.name) for e in runs.events(run.id)] == [(EventKind.TOOL, "write"), (EventKind.TOKENS, "")]
        assert runs.active(conversation.id) == []
        assert [r.id for r in runs.in_state(RunState.DONE)] == [run.id]


def test_resources_memories_and_processed_events(db: Database) -> None:
    with db.session() as s:
        conversation = Conversations(s).ensure(WHERE)
        Resources(s).add(conversation.id, "report.md", size=12, sha256="ab" * 32, platform_file_id="F1")
        Memories(s).add("ana prefers pytest", conversation_id=conversation.id, tokens=5, kind="exchange")
        assert ProcessedEvents(s).claim("slack", "Ev1")
        assert not ProcessedEvents(s).claim("slack", "Ev1")
        assert ProcessedEvents(s).claim("discord", "Ev1")
    with db.session() as s:
        assert [(r.path, r.size, r.platform_file_id) for r in Resources(s).in_conversation(conversation.id)] == [
            ("report.md", 12, "F1")
        ]
        assert [m.text for m in Memories(s).for_conversation(conversation.id)] == ["ana prefers pytest"]
        assert not ProcessedEvents(s).claim("slack", "Ev1")


def test_conversations_in_a_channel_are_listed_with_message_counts(db: Database) -> None:
    with db.session() as s:
        a = Conversations(s).ensure(WHERE)
        b = Conversations(s).ensure(ThreadRef("slack", "C042", "other"))
        Conversations(s).ensure(ThreadRef("slack", "C999", "elsewhere"))
        Conversations(s).set_agent_session(b.id, "ses_123")
    add(db, a.id, "user", "one")
    add(db, a.id, "user", "two")
    with db.session() as s:
        listed = {c.where.thread: n for c, n in Conversations(s).in_channel("slack", "C042")}
        assert listed == {WHERE.thread: 2, "other": 0}
        assert Conversations(s).get(b.id).agent_session_id == "ses_123"


def test_history_for_models_leaves_out_run_status_messages(db: Database) -> None:
    with db.session() as s:
        conversation = Conversations(s).ensure(WHERE)
    request = add(db, conversation.id, "user", "fix the build")
    with db.session() as s:
        run, _ = Runs(s).create(conversation.id, "opencode", "fix the build", request_message_id=request)
        Runs(s).set(run.id, status_message_id="1700.0002")
    add(db, conversation.id, "assistant", "⏳ Agent run 1 · running", external_id="1700.0002")
    add(db, conversation.id, "assistant", "Fixed: a missing import.", external_id="1700.0003")
    with db.session() as s:
        everything = [e.text for e in Messages(s).recent(conversation.id)]
        for_models = [e.text for e in Messages(s).recent(conversation.id, without_run_status=True)]
    assert everything == ["fix the build", "⏳ Agent run 1 · running", "Fixed: a missing import."]
    assert for_models == ["fix the build", "Fixed: a missing import."]
