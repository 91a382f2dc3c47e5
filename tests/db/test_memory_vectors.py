"""Semantic memory search: vectors written with their memories, found by meaning, forgotten with them.

These run on SQLite and PostgreSQL with the real model of the `embeddings` extra (CI installs
it); without the extra they are skipped, and the full-text-only path is tested by switching
semantic search off (`BOT_SEMANTIC_SEARCH=off`), as an operator would.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from bot import embeddings
from bot.context import ContextBuilder
from bot.db import Database
from bot.db.repositories import Conversations, Memories
from bot.memory import MemoryKind, Scope, estimate_tokens, scopes_for
from bot.types import Message, ThreadRef

HERE = ThreadRef("slack", "C042", "1700000000.000100")
NEW_THREAD = ThreadRef("slack", "C042", "1700000000.000900")
ELSEWHERE = ThreadRef("slack", "C999", "1700000000.000200")
#: Facts of the channel with no word in common with "when do we ship?".
UNRELATED = ["Lunch is at noon.", "The parser retries three times before giving up.",
             "Ana prefers answers in French.", "Our coffee machine is on the third floor."]
DEPLOYS = "Deploys happen on Thursdays."
needs_model = pytest.mark.skipif(not embeddings.installed() or not embeddings.switched_on(),
                                 reason="the `embeddings` extra is not installed, or BOT_SEMANTIC_SEARCH=off")


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    database.migrate()
    yield database
    database.close()


def keep(db: Database, fact: str, scope: Scope, author: str = "U1", kind: str = MemoryKind.FACT.value) -> int:
    with db.session() as s:
        return Memories(s).add(fact, conversation_id=Conversations(s).ensure(HERE).id, tokens=estimate_tokens(fact),
                               kind=kind, scope=scope, author_id=author, author_name=author)


def vector_rows(db: Database, memory_id: int | None = None) -> int:
    """Return how many vectors the database holds (of one memory, or all)."""
    with db.engine.connect() as connection:
        if memory_id is None:
            return connection.execute(text("SELECT count(*) FROM memory_vectors")).scalar_one()
        return connection.execute(text("SELECT count(*) FROM memory_vectors WHERE memory_id = :m"),
                                  {"m": memory_id}).scalar_one()


def found(db: Database, scopes: list[Scope], question: str) -> list[str]:
    with db.reading() as s:
        return [m.text for m in Memories(s).search(scopes, question, kinds=(MemoryKind.FACT, MemoryKind.EXCHANGE))]


@needs_model
def test_a_related_fact_with_no_shared_word_is_recalled_in_its_channel_only(db: Database) -> None:
    person, channel, team = scopes_for("slack", "C042", "U1")
    for fact in UNRELATED:
        keep(db, fact, channel)
    keep(db, DEPLOYS, channel)

    assert found(db, [person, channel, team], "when do we ship?") == [DEPLOYS]
    assert found(db, list(scopes_for("slack", "C999", "U1")), "when do we ship?") == []
    with db.session() as s:
        thread = Conversations(s).ensure(NEW_THREAD)
    context = ContextBuilder(db).build(Message(where=NEW_THREAD, text="when do we ship?", user_id="U1"), thread, 2000)
    assert context.channel[0].text == DEPLOYS  # what the message is about comes before the channel's newest facts


@needs_model
def test_a_match_by_words_and_by_meaning_ranks_above_either_alone(db: Database) -> None:
    _, channel, _ = scopes_for("slack", "C042", "U1")
    keep(db, "Deploys of the billing service go through make ship-billing.", channel)
    keep(db, "The billing export runs nightly.", channel)
    keep(db, DEPLOYS, channel)
    with db.reading() as s:
        hits = Memories(s).search([channel], "how do we deploy billing?")
    assert hits[0].text == "Deploys of the billing service go through make ship-billing."
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)


@needs_model
def test_forgetting_deletes_the_vectors_too(db: Database) -> None:
    person, channel, _ = scopes_for("slack", "C042", "U1")
    mine = keep(db, "I ship my changes on Fridays.", person)
    said = keep(db, DEPLOYS, channel)
    theirs = keep(db, "Bo reviews every deploy.", channel, author="U2")
    with db.session() as s:
        Memories(s).add("U1 asked: when is the release?\nAnswer: Thursday.", conversation_id=Conversations(s)
                        .ensure(HERE).id, tokens=12, kind=MemoryKind.EXCHANGE.value, author_id="U1")
    assert vector_rows(db) == 4
    assert "I ship my changes on Fridays." in found(db, [person, channel], "when do we ship?")

    with db.session() as s:
        repository = Memories(s)
        assert repository.delete(repository.get([theirs])) == 1
    assert vector_rows(db, theirs) == 0 and vector_rows(db) == 3
    with db.session() as s:
        assert Memories(s).forget_person("slack", "U1") == 3  # their fact, the fact they said, their exchange
    assert vector_rows(db, mine) == vector_rows(db, said) == vector_rows(db) == 0
    assert found(db, [person, channel], "when do we ship?") == []


@needs_model
def test_a_memory_deleted_by_sql_takes_its_vector_along(db: Database) -> None:
    """The foreign key cascades on both databases (SQLite runs with `PRAGMA foreign_keys=ON`)."""
    _, channel, _ = scopes_for("slack", "C042", "U1")
    memory_id = keep(db, DEPLOYS, channel)
    with db.engine.begin() as connection:
        if db.engine.dialect.name == "sqlite":
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
        connection.execute(text("DELETE FROM memories WHERE id = :m"), {"m": memory_id})
    assert vector_rows(db) == 0


@needs_model
def test_another_process_writes_and_forgets_and_the_cached_vectors_follow(database_url: str) -> None:
    searcher, writer = Database(database_url), Database(database_url)  # two processes' engines and caches
    searcher.migrate()
    _, channel, _ = scopes_for("slack", "C042", "U1")
    try:
        keep(writer, "Lunch is at noon.", channel)
        assert found(searcher, [channel], "when do we ship?") == []  # the scope's vectors are cached now
        exchange = keep(writer, "U1 asked: which day is the release?\nAnswer: deploys happen on Thursdays.", channel,
                        kind=MemoryKind.EXCHANGE.value)  # an exchange does not change the scope's version
        assert found(searcher, [channel], "when do we ship?") == [  # no word in common: found by its vector
            "U1 asked: which day is the release?\nAnswer: deploys happen on Thursdays."]
        with writer.session() as s:
            repository = Memories(s)
            repository.delete(repository.get([exchange]))
        assert found(searcher, [channel], "when do we ship?") == []
    finally:
        searcher.close()
        writer.close()


@needs_model
def test_a_proposal_gets_its_vector_when_someone_confirms_it(db: Database) -> None:
    person, channel, team = scopes_for("slack", "C042", "U1")
    with db.session() as s:
        proposal_id = Memories(s).propose(DEPLOYS, scope=channel, conversation_id=Conversations(s).ensure(HERE).id,
                                          platform_message_id="1700000000.000500", tokens=8)
    assert vector_rows(db) == 0 and found(db, [person, channel, team], "when do we ship?") == []
    with db.session() as s:
        repository = Memories(s)
        assert repository.confirm(repository.get([proposal_id])[0])
    assert vector_rows(db, proposal_id) == 1
    assert found(db, [person, channel, team], "when do we ship?") == [DEPLOYS]


def test_with_semantic_search_switched_off_memories_are_found_by_their_words_only(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(embeddings.SWITCH_ENV, "off")
    person, channel, team = scopes_for("slack", "C042", "U1")
    keep(db, DEPLOYS, channel)
    assert vector_rows(db) == 0
    assert found(db, [person, channel, team], "when do we ship?") == []
    assert found(db, [person, channel, team], "which day are deploys?") == [DEPLOYS]
    with db.session() as s:
        repository = Memories(s)
        assert repository.delete(repository.search([channel], "deploys")) == 1
    assert found(db, [person, channel, team], "which day are deploys?") == []


def test_a_forgotten_word_is_gone_from_the_sqlite_index_segments_too(tmp_path) -> None:
    """FTS5 keeps deleted words in its older segments until they are merged: forgetting merges them."""
    db = Database(f"sqlite:///{tmp_path / 'forget.db'}")
    db.migrate()
    person, channel, _ = scopes_for("slack", "C042", "U1")
    try:
        for n in range(50):  # other memories, written in transactions of their own: segments of their own
            keep(db, f"Note {n} about the parser and the queue.", channel, author="U2")
        keep(db, "My cat is called Quuxzebulon.", person)
        with db.session() as s:
            assert Memories(s).forget_person("slack", "U1") == 1
        with db.engine.connect() as connection:
            blocks = connection.execute(text("SELECT block FROM memories_fts_data")).scalars().all()
        assert not [block for block in blocks if block and b"quuxzebulon" in bytes(block)]
        assert found(db, [channel], "parser queue")  # the others are still found
    finally:
        db.close()
