"""Proposed memories where there are no reactions (the console): offered after an answer, kept with `/keep`.

The engine answers through the real anthropic SDK against the local Messages API
(tests/plugins/conftest.py); the thread is what the RecordingPort shows.
"""

from __future__ import annotations

import time

from bot.types import ThreadRef
from plugins.memory.proposals import detect
from tests.fakes.anthropic_server import FakeAnthropicServer
from tests.support.engines import EngineFactory, dispatch_and_wait

NEW_THREAD = ThreadRef("test", "C1", "T2")
OFFER = "Remember that we deploy with make ship? Reply `/keep` to keep it for this channel."


def last_post(port) -> str:
    return port.final_texts[port.order[-1]]


def test_a_decision_is_offered_after_the_answer_and_kept_with_keep(
        make_engine: EngineFactory, anthropic_server: FakeAnthropicServer, database_url: str) -> None:
    engine, port = make_engine(env={"DATABASE_URL": database_url})
    dispatch_and_wait(engine, "/ask from now on we deploy with make ship. What does it run?")
    assert last_post(port) == OFFER
    dispatch_and_wait(engine, "/memories")
    assert "make ship" not in last_post(port)  # offered, not kept

    dispatch_and_wait(engine, "/keep")
    assert last_post(port).startswith("Kept for this channel as `m") and last_post(port).endswith(
        ": We deploy with make ship")
    dispatch_and_wait(engine, "/memories")
    assert "We deploy with make ship" in last_post(port)
    dispatch_and_wait(engine, "/ask how do we deploy?", where=NEW_THREAD)
    assert "We deploy with make ship" in anthropic_server.bodies[-1]["system"]
    dispatch_and_wait(engine, "/keep")
    assert last_post(port) == ("I have offered nothing to remember in this thread. "
                               "Keep a fact with `/remember <fact>`.")

    dispatch_and_wait(engine, "/ask ok, from now on we deploy with make ship")
    assert port.posts.count(OFFER) == 1  # kept already: not offered twice


def test_a_secret_is_never_offered_and_the_same_fact_only_once(
        make_engine: EngineFactory, anthropic_server: FakeAnthropicServer) -> None:
    engine, port = make_engine()
    dispatch_and_wait(engine, f"/ask from now on we call the API with {anthropic_server.client_key} please")
    assert not any(post.startswith("Remember that") for post in port.posts)

    dispatch_and_wait(engine, "/ask from now on we deploy with make ship")
    dispatch_and_wait(engine, "/ask from now on we deploy with make ship")
    assert port.posts.count(OFFER) == 1


def test_an_unconfirmed_offer_expires(make_engine: EngineFactory, anthropic_server: FakeAnthropicServer) -> None:
    engine, port = make_engine(manifest={"memory": {"proposal_ttl_hours": 0.0003}})  # about a second
    dispatch_and_wait(engine, "/ask from now on we deploy with make ship")
    assert last_post(port) == OFFER
    time.sleep(1.5)
    dispatch_and_wait(engine, "/keep")
    assert last_post(port) == ("That suggestion is more than 0.0003 hours old and was dropped; "
                               "`/remember` the fact if it still holds.")
    dispatch_and_wait(engine, "/memories")
    assert "make ship" not in last_post(port)


def test_the_detector_finds_decisions_and_preferences_not_questions_or_chatter() -> None:
    found = {text: detect(text) for text in (
        "ok, we decided staging runs on Thursdays.", "Let's always squash-merge feature branches",
        "staging runs on Thursdays", "I prefer short answers with examples", "should we deploy on fridays?",
        "what do you think? we agreed that the API stays frozen until March", "thanks, that worked")}
    assert {text: (c.text, c.scope.value) if c else None for text, c in found.items()} == {
        "ok, we decided staging runs on Thursdays.": ("Staging runs on Thursdays", "channel"),
        "Let's always squash-merge feature branches": ("We always squash-merge feature branches", "channel"),
        "staging runs on Thursdays": ("Staging runs on Thursdays", "channel"),
        "I prefer short answers with examples": ("I prefer short answers with examples", "person"),
        "should we deploy on fridays?": None,
        "what do you think? we agreed that the API stays frozen until March":
            ("The API stays frozen until March", "channel"),
        "thanks, that worked": None,
    }


def test_a_decision_in_an_agent_request_is_offered_once_the_run_is_done(
        make_engine: EngineFactory, anthropic_server: FakeAnthropicServer) -> None:
    engine, port = make_engine(manifest={"plugins": {"modules": ["tests.workers.toy_agent_plugin"]},
                                         "agent": {"name": "toy"}})
    dispatch_and_wait(engine, "/agent from now on we deploy with make ship; add the make target")
    assert engine.queue.wait(timeout=60)
    assert [post for post in port.final_texts.values() if post.startswith("Remember that")] == [OFFER]
    assert last_post(port) == OFFER  # after the run's answer
