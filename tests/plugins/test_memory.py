"""Memory as people use it: /remember, /memories, /forget, and what the model is then given.

The engine answers through the real anthropic SDK against the local Messages API
(tests/plugins/conftest.py); what the model was given is read from the requests it received.
"""

from __future__ import annotations

import re

from sqlalchemy import text

from bot.types import Message, ThreadRef, utcnow
from tests.fakes.anthropic_server import FakeAnthropicServer
from tests.support.engines import EngineFactory, dispatch_and_wait

HERE = ThreadRef("test", "C1", "T1")
NEW_THREAD = ThreadRef("test", "C1", "T2")
OTHER_CHANNEL = ThreadRef("test", "C2", "T3")


def reply(port) -> str:
    """Return the last message the bot posted (a command's reply)."""
    return port.final_texts[port.order[-1]]


def system_of_last_answer(server: FakeAnthropicServer) -> str:
    return server.bodies[-1]["system"]


def test_a_channel_fact_reaches_the_model_in_a_new_thread_of_its_channel_only(
        make_engine: EngineFactory, anthropic_server: FakeAnthropicServer, database_url: str) -> None:
    engine, port = make_engine(env={"DATABASE_URL": database_url})
    dispatch_and_wait(engine, "/remember releases are cut from the trunk branch on Thursdays", where=HERE)
    assert re.fullmatch(r"Remembered for this channel as `m\d+`: releases are cut .*", reply(port))

    dispatch_and_wait(engine, "/ask when do we cut a release?", where=NEW_THREAD)
    assert "cut from the trunk branch on Thursdays" in system_of_last_answer(anthropic_server)
    dispatch_and_wait(engine, "/ask when do we cut a release?", where=OTHER_CHANNEL)
    assert "trunk branch" not in str(anthropic_server.bodies[-1])


def test_a_persons_preference_follows_them_and_is_not_used_for_someone_else(
        make_engine: EngineFactory, anthropic_server: FakeAnthropicServer, database_url: str) -> None:
    engine, port = make_engine(env={"DATABASE_URL": database_url})
    dispatch_and_wait(engine, "/remember me I prefer examples in Rust", user="U1", where=HERE)
    assert "for you (wherever you talk to me)" in reply(port)

    dispatch_and_wait(engine, "/ask show me how to read a file", user="U1", where=OTHER_CHANNEL)
    assert "I prefer examples in Rust" in system_of_last_answer(anthropic_server)
    dispatch_and_wait(engine, "/ask show me how to read a file", user="U2", where=NEW_THREAD)
    assert "Rust" not in str(anthropic_server.bodies[-1])


def test_remember_says_how_and_refuses_what_it_must_not_keep(make_engine: EngineFactory,
                                                              anthropic_server: FakeAnthropicServer) -> None:
    engine, port = make_engine(manifest={"permissions": {"admin": ["U9"]}})
    dispatch_and_wait(engine, "/remember")
    assert reply(port).startswith("Usage: `/remember [me|channel|team] <fact>`")
    dispatch_and_wait(engine, "/remember " + "x" * 2001)
    assert "2,001 characters; I keep facts of at most 2,000" in reply(port)
    dispatch_and_wait(engine, f"/remember the key is {anthropic_server.client_key}")
    assert "holds a secret" in reply(port)
    dispatch_and_wait(engine, "/remember team we ship on Fridays", user="U1")
    assert reply(port).startswith("Only the bot's admins can keep facts for the whole team")
    dispatch_and_wait(engine, "/remember team we ship on Fridays", user="U9")
    assert "for the whole team" in reply(port)
    with engine.db.engine.connect() as connection:
        kept = connection.execute(text("SELECT scope, text, author_id FROM memories")).all()
        source = connection.execute(text("SELECT m.text FROM memories f JOIN messages m ON m.id = f.source_message_id"
                                         " WHERE f.kind = 'fact'")).scalar_one()
    assert [tuple(row) for row in kept] == [("team", "we ship on Fridays", "U9")]
    assert source == "/remember team we ship on Fridays"  # the fact's source: the message that asked


def test_memories_lists_what_applies_and_forget_removes_it_from_recall_and_the_index(
        make_engine: EngineFactory, anthropic_server: FakeAnthropicServer) -> None:
    engine, port = make_engine()
    dispatch_and_wait(engine, "/remember me I like gherkins", user="U1")
    dispatch_and_wait(engine, "/remember the staging database is called pickles", user="U1")
    dispatch_and_wait(engine, "/remember me I like olives", user="U2")
    dispatch_and_wait(engine, "/memories", user="U1")
    listing = reply(port)
    assert "**About you:**" in listing and "I like gherkins" in listing and "olives" not in listing
    assert re.search(r"- `m\d+` the staging database is called pickles _\(ana, \d{4}-\d\d-\d\d, #C1\)_", listing)

    dispatch_and_wait(engine, "/forget nothing like this", user="U1")
    assert reply(port).startswith("Nothing I remember matches `nothing like this`")
    olives = re.search(r"m(\d+)", [p for p in port.posts if "olives" in p][0]).group(1)
    dispatch_and_wait(engine, f"/forget m{olives}", user="U1")
    assert reply(port) == "Those memories are not yours to forget (ask an admin)."
    dispatch_and_wait(engine, "/forget staging database", user="U1")
    assert reply(port).startswith("Forgotten (1):") and "pickles" in reply(port)

    with engine.db.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM memories_fts WHERE memories_fts MATCH 'pickles'")
                                  ).scalar_one() == 0
        assert connection.execute(text("SELECT count(*) FROM memories WHERE text LIKE '%pickles%'")).scalar_one() == 0
    dispatch_and_wait(engine, "/ask what is the staging database called?", user="U1", where=NEW_THREAD)
    assert "pickles" not in str(anthropic_server.bodies[-1])
    assert "gherkins" in system_of_last_answer(anthropic_server)


def test_forget_me_leaves_no_memory_row_about_the_person(make_engine: EngineFactory,
                                                         anthropic_server: FakeAnthropicServer) -> None:
    engine, port = make_engine()
    dispatch_and_wait(engine, "/remember me my dog is called Biscuit", user="U1")
    dispatch_and_wait(engine, "/remember Biscuit visits the office on Mondays", user="U1")
    dispatch_and_wait(engine, "/ask what breed suits a small flat?", user="U1")  # an exchange is remembered
    dispatch_and_wait(engine, "/remember the office has a dog bowl", user="U2")
    dispatch_and_wait(engine, "/forget me", user="U1", where=OTHER_CHANNEL)
    assert reply(port).startswith("Forgotten: 3 memories about you")

    with engine.db.engine.connect() as connection:
        rows = connection.execute(text("SELECT author_id, user_id, text FROM memories")).all()
        indexed = connection.execute(text("SELECT body FROM memories_fts")).scalars().all()
        versions = connection.execute(text("SELECT count(*) FROM memory_scopes")).scalar_one()
    assert [tuple(row) for row in rows] == [("U2", "", "the office has a dog bowl")]
    assert indexed == ["the office has a dog bowl"]
    assert versions == 1  # the channel's stamp; the person's went with them
    dispatch_and_wait(engine, "/forget me", user="U1")
    assert reply(port) == "I held nothing about you."


def test_a_long_thread_is_summarised_by_claude_once_and_the_summary_reused(
        make_engine: EngineFactory, anthropic_server: FakeAnthropicServer) -> None:
    engine, _ = make_engine(manifest={"llm": {"context_budget_tokens": 400}})
    dispatch_and_wait(engine, "/remember we are rewriting the parser")  # the thread exists
    conversation_id = engine.inbox.conversation(HERE, "").id
    with engine.db.engine.begin() as connection:
        connection.execute(text("INSERT INTO messages (conversation_id, role, text, created_at)"
                                " VALUES (:c, 'assistant', :text, :t)"),
                           [{"c": conversation_id, "text": f"Point {n}: the tokenizer keeps state number {n}.",
                             "t": utcnow()} for n in range(200)])
    anthropic_server.script.text("We agreed the tokenizer keeps its state.").text("Answer one.").text("Answer two.")
    dispatch_and_wait(engine, "/ask so what did we decide?")
    summary_request, answer = anthropic_server.bodies[-2:]
    assert "You summarise the earlier part" in summary_request["system"]
    assert summary_request["model"] == engine.manifest.router.classifier_model
    assert "We agreed the tokenizer keeps its state." in answer["system"]

    dispatch_and_wait(engine, "/ask and then?")
    assert len(anthropic_server.bodies) == 3  # no second summary: the stored one is reused
    assert "We agreed the tokenizer keeps its state." in anthropic_server.bodies[-1]["system"]


def test_without_a_key_a_long_thread_keeps_first_sentences_within_the_budget(make_engine: EngineFactory) -> None:
    budget = 400
    engine, _ = make_engine(key=False, manifest={"llm": {"context_budget_tokens": budget}})
    dispatch_and_wait(engine, "/remember we are rewriting the parser")
    conversation = engine.inbox.conversation(HERE, "")
    with engine.db.engine.begin() as connection:
        connection.execute(text("INSERT INTO messages (conversation_id, role, text, created_at)"
                                " VALUES (:c, 'assistant', :text, :t)"),
                           [{"c": conversation.id, "text": f"Point {n}. Details nobody needs {n}.", "t": utcnow()}
                            for n in range(300)])
    items = engine.recall(Message(where=HERE, text="what now?", user_id="U1"), conversation, budget)
    assert sum(item.tokens for item in items) <= budget
    (summary,) = [item for item in items if item.source == "thread:summary"]
    assert "Point" in summary.text and "Details nobody needs" not in summary.text
