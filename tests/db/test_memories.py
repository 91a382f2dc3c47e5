"""Memories: scopes, the search index, forgetting, and the context builder (on SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import event, text

from bot import embeddings
from bot.context import ContextBuilder
from bot.db import Database, head_revision
from bot.db.memories import FTS_TABLE
from bot.db.repositories import Conversations, Memories
from bot.memory import MemoryKind, Scope, ScopeKind, estimate_tokens, scopes_for
from bot.types import Conversation, Message, ThreadRef, utcnow

HERE = ThreadRef("slack", "C042", "1700000000.000100")
NEW_THREAD = ThreadRef("slack", "C042", "1700000000.000900")
ELSEWHERE = ThreadRef("slack", "C999", "1700000000.000200")
OTHER_PLATFORM = ThreadRef("discord", "C042", "1700000000.000300")


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    assert database.migrate() == head_revision()
    yield database
    database.close()


def conversation(db: Database, where: ThreadRef) -> Conversation:
    with db.session() as s:
        return Conversations(s).ensure(where)


def keep(db: Database, fact: str, scope: Scope, author: str = "U1", where: ThreadRef = HERE) -> int:
    with db.session() as s:
        return Memories(s).add(fact, conversation_id=Conversations(s).ensure(where).id, tokens=estimate_tokens(fact),
                               kind=MemoryKind.FACT.value, scope=scope, author_id=author, author_name="ana")


def ask(where: ThreadRef, text_: str, user: str = "U1") -> Message:
    return Message(where=where, text=text_, user_id=user, user_name={"U1": "ana", "U2": "bo"}.get(user, user))


def recalled(db: Database, where: ThreadRef, question: str, user: str = "U1", budget: int = 2000) -> str:
    context = ContextBuilder(db).build(ask(where, question, user), conversation(db, where), budget)
    return "\n".join(item.text for item in context.items())


def indexed(db: Database, word: str) -> int:
    """Return how many search index entries hold the word, asked of the index itself."""
    with db.engine.connect() as connection:
        if db.engine.dialect.name == "postgresql":
            return connection.execute(text("SELECT count(*) FROM memories WHERE search @@ to_tsquery('english', :w)"),
                                      {"w": word}).scalar_one()
        return connection.execute(text(f"SELECT count(*) FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH :w"),
                                  {"w": f'"{word}"'}).scalar_one()


def add_thread(db: Database, where: ThreadRef, count: int, words: int = 12) -> Conversation:
    """Store a thread of `count` messages from two people and the bot, in one statement."""
    found = conversation(db, where)
    with db.engine.begin() as connection:
        participant = connection.execute(text(
            "INSERT INTO participants (conversation_id, user_id, display_name, first_seen_at, last_seen_at)"
            " VALUES (:c, 'U1', 'ana', :t, :t) RETURNING id"), {"c": found.id, "t": utcnow()}).scalar_one()
        connection.execute(text(
            "INSERT INTO messages (conversation_id, participant_id, role, text, created_at)"
            " VALUES (:c, :p, :role, :text, :t)"),
            [{"c": found.id, "p": participant if n % 2 == 0 else None, "role": "user" if n % 2 == 0 else "assistant",
              "text": f"Message {n} about the parser. " + " ".join(f"word{n}x{i}" for i in range(words)),
              "t": utcnow()} for n in range(count)])
    return found


def test_a_channel_fact_stays_in_its_channel_and_a_team_fact_is_everywhere_on_its_platform(db: Database) -> None:
    person, channel, team = scopes_for("slack", "C042", "U1")
    keep(db, "Deploys of the billing service go through make ship-billing.", channel)
    keep(db, "The on-call rota lives in the ops wiki.", team)
    keep(db, "Ana prefers answers in French.", person)

    assert "make ship-billing" in recalled(db, NEW_THREAD, "how do we deploy billing?")
    assert "make ship-billing" not in recalled(db, ELSEWHERE, "how do we deploy billing?")
    assert "on-call rota" in recalled(db, ELSEWHERE, "who is on call?")
    assert "on-call rota" not in recalled(db, OTHER_PLATFORM, "who is on call?")
    assert "French" in recalled(db, ELSEWHERE, "how should I name this function?", user="U1")
    assert "French" not in recalled(db, NEW_THREAD, "how should I name this function?", user="U2")
    assert "French" not in recalled(db, OTHER_PLATFORM, "how should I name this function?", user="U1")


def test_search_blends_relevance_and_recency_within_the_scopes(db: Database) -> None:
    _, channel, _ = scopes_for("slack", "C042", "U1")
    old = keep(db, "The parser retries three times before giving up.", channel)
    new = keep(db, "The parser retries five times since the outage.", channel)
    keep(db, "Lunch is at noon.", channel)
    _, elsewhere, _ = scopes_for("slack", "C999", "U1")
    keep(db, "The parser retries nine times in the other channel.", elsewhere)
    with db.session() as s:
        s.execute(text("UPDATE memories SET created_at = :t WHERE id = :id"), {"t": utcnow() - timedelta(days=400),
                                                                               "id": old})
    with db.reading() as s:
        found = Memories(s).search([channel], "how many parser retries?")
    assert [memory.id for memory in found] == [new, old]  # same words; the newer first, nothing from elsewhere
    assert found[0].score > found[1].score > 0


def test_forgetting_removes_the_row_and_its_index_entry(db: Database) -> None:
    person, channel, _ = scopes_for("slack", "C042", "U1")
    memory_id = keep(db, "Ana prefers tabs over spaces.", person)
    keep(db, "The channel indents with tabs in Makefiles.", channel)
    assert indexed(db, "tab") == 2
    with db.session() as s:
        repository = Memories(s)
        assert repository.delete(repository.get([memory_id])) == 1
    assert indexed(db, "tab") == 1
    with db.reading() as s:
        assert Memories(s).get([memory_id]) == []
        assert [m.text for m in Memories(s).search([person, channel], "tabs")] == [
            "The channel indents with tabs in Makefiles."]
    assert "prefers tabs" not in recalled(db, HERE, "tabs or spaces?")


def test_forgetting_a_person_leaves_no_row_about_them(db: Database) -> None:
    person, channel, team = scopes_for("slack", "C042", "U1")
    keep(db, "Ana's cat is called Zebulon.", person)
    keep(db, "Ana says the zebulon cluster is in eu-west.", channel)
    keep(db, "Bo keeps the zebulon backups.", channel, author="U2")
    thread = add_thread(db, HERE, 300, words=30)
    with db.session() as s:
        Memories(s).add("ana asked: where is zebulon?\nAnswer: eu-west.", conversation_id=thread.id, tokens=12,
                        kind="exchange", author_id="U1", author_name="ana")
    ContextBuilder(db).build(ask(HERE, "what next?"), thread, 500)  # the thread outgrows it: a summary is kept
    with db.reading() as s:
        assert Memories(s).summary(thread.id) is not None

    with db.session() as s:
        removed = Memories(s).forget_person("slack", "U1")
    assert removed == 4  # their fact, the fact they said, their exchange, the summary of their thread
    with db.engine.connect() as connection:
        left = connection.execute(text("SELECT text, user_id, author_id, kind FROM memories")).all()
        scopes = connection.execute(text("SELECT key FROM memory_scopes")).scalars().all()
    assert [tuple(row) for row in left] == [("Bo keeps the zebulon backups.", "", "U2", "fact")]
    assert person.token not in scopes
    assert indexed(db, "zebulon") == 1  # only Bo's fact is still in the index
    assert indexed(db, "eu") == 0


def test_old_exchanges_become_channel_memories_when_migrating(database_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    from bot.db import MIGRATIONS_DIR

    db = Database(database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0003")
    with db.engine.begin() as connection:
        conversation_id = connection.execute(text(
            "INSERT INTO conversations (platform, channel, thread, title, created_at, updated_at)"
            " VALUES ('slack', 'C042', 't1', '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP) RETURNING id")).scalar_one()
        connection.execute(text(
            "INSERT INTO memories (conversation_id, kind, text, tokens, created_at) VALUES"
            " (:c, 'exchange', 'bo asked: how do we deploy billing?\nAnswer: make ship-billing', 12, CURRENT_TIMESTAMP)"),
            {"c": conversation_id})
    try:
        assert db.migrate() == head_revision()
        _, channel, _ = scopes_for("slack", "C042", "U1")
        with db.reading() as s:
            (found,) = Memories(s).search([channel], "deploy billing", kinds=(MemoryKind.EXCHANGE,))
        assert (found.scope, found.platform, found.channel) == (ScopeKind.CHANNEL, "slack", "C042")
        assert "make ship-billing" in recalled(db, NEW_THREAD, "how do we deploy billing?")
    finally:
        db.close()


def test_a_thread_of_5000_messages_fits_the_budget_through_a_stored_summary(db: Database) -> None:
    thread = add_thread(db, HERE, 5000)
    budget = 6000
    builder = ContextBuilder(db)
    context = builder.build(ask(HERE, "so what did we decide about the parser?"), thread, budget)
    assert context.tokens <= budget
    assert context.summary and "Message" in context.summary
    assert context.thread[-1].text.startswith("Message 4999 ")  # the newest messages, word for word
    with db.reading() as s:
        stored = Memories(s).summary(thread.id)
    assert stored is not None and stored.through_message_id < context.thread[0].id

    calls: list[int] = []
    fresh = ContextBuilder(db)  # another worker: it reuses the stored summary, summarising nothing
    again = fresh.build(ask(HERE, "and the lexer?"), thread, budget,
                        summarise=lambda entries, previous, tokens: calls.append(len(entries)) or "x")
    assert calls == [] and again.summary == context.summary and again.tokens <= budget


def test_the_second_message_of_a_thread_is_served_from_the_cache(db: Database) -> None:
    person, channel, team = scopes_for("slack", "C042", "U1")
    keep(db, "Ana prefers short answers.", person)
    keep(db, "This channel's service is billing.", channel)
    keep(db, "The team deploys on Tuesdays.", team)
    thread = add_thread(db, HERE, 40)
    builder = ContextBuilder(db)
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        first = builder.build(ask(HERE, "how do we deploy billing?"), thread, 3000)
        first_cost = len(statements)
        statements.clear()
        with db.engine.begin() as connection:  # the thread gets its second question
            connection.execute(text("INSERT INTO messages (conversation_id, role, text, created_at)"
                                    " VALUES (:c, 'user', 'and the parser?', :t)"), {"c": thread.id, "t": utcnow()})
        statements.clear()
        second = builder.build(ask(HERE, "and the parser?"), thread, 3000)
        second_cost = len(statements)
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert [m.text for m in second.person] == [m.text for m in first.person] == ["Ana prefers short answers."]
    assert second.team and second.channel
    # The scopes' version stamps, the thread's new messages, the message's own search (and BEGIN);
    # with semantic search on, the search asks whether its cached vectors still stand (one more).
    assert second_cost <= (5 if embeddings.enabled() else 4) < first_cost

    keep(db, "Ana now prefers long answers.", person)  # a memory in scope changed: read again
    third = builder.build(ask(HERE, "and the parser?"), thread, 3000)
    assert "Ana now prefers long answers." in [m.text for m in third.person]
