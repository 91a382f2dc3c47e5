"""Direct answers: the real anthropic SDK against a local Messages API, streamed into a thread."""

from __future__ import annotations

import logging

from bot import constants
from bot.db.repositories import Memories
from plugins.answer.claude import ATTACHMENT_NAME, WRITING_MARK
from tests.fakes.anthropic_server import FakeAnthropicServer
from tests.support.engines import EngineFactory, dispatch_and_wait, rows
from workers.jobs import NO_MODEL_CONFIGURED

ANSWER = ("A **race condition** is when the result depends on the timing of threads that share state.\n\n"
          "- guard the shared state with a lock\n- or avoid sharing it")


def assistant_rows(engine, conversation_id: int) -> list[tuple[str, int | None]]:
    return rows(engine, "select text, reply_to_id from messages where conversation_id = ? and role = 'assistant'"
                        " order by id", conversation_id)


def test_a_streamed_answer_arrives_as_edits_of_one_message_and_is_stored(
        make_engine: EngineFactory, anthropic_server: FakeAnthropicServer) -> None:
    engine, port = make_engine()
    anthropic_server.script.text(ANSWER, chunk_size=10, delay=0.03)
    dispatched = dispatch_and_wait(engine, "/ask what is a race condition?")

    versions = port.replies("m1")
    assert versions[0].text == WRITING_MARK and versions[0].partial
    partials = versions[1:-1]
    assert len(partials) >= 2, "the answer should be seen growing"
    assert all(v.partial and v.text.endswith(WRITING_MARK) for v in partials)
    assert versions[-1].text == ANSWER and not versions[-1].partial
    assert len(port.final_texts) == 1  # one message, edited; no second post
    assert assistant_rows(engine, dispatched.conversation.id) == [(ANSWER, dispatched.message_id)]
    with engine.db.session() as session:  # the exchange is remembered for later threads
        remembered = Memories(session).for_conversation(dispatched.conversation.id, kind="exchange")
    assert "race condition" in remembered[0].text

    (request,) = anthropic_server.message_requests
    assert request.stream and request.body["model"] == engine.manifest.llm.model
    assert request.body["max_tokens"] == engine.manifest.llm.max_tokens
    assert request.body["messages"][-1] == {"role": "user", "content": "ana: what is a race condition?"}


def test_the_prompt_carries_the_thread_within_the_budget_and_no_secrets(
        make_engine: EngineFactory, anthropic_server: FakeAnthropicServer) -> None:
    engine, _ = make_engine()
    anthropic_server.script.text("First answer.").text("Second answer.")
    dispatch_and_wait(engine, "/ask how do postgres advisory locks work?")
    key = anthropic_server.client_key
    dispatch_and_wait(engine, f"/ask my key {key} leaked in a log, are they reentrant?")

    body = anthropic_server.bodies[-1]
    turns = body["messages"]
    assert [turn["role"] for turn in turns] == ["user", "assistant", "user"]
    assert "advisory locks" in turns[0]["content"] and turns[1]["content"] == "First answer."
    assert key not in str(body) and "[redacted]" in turns[-1]["content"]
    assert "coding agent" in body["system"]  # the model knows to propose the agent for code changes


def test_a_429_is_retried_after_its_retry_after_and_the_answer_arrives(
        make_engine: EngineFactory, anthropic_server: FakeAnthropicServer) -> None:
    engine, port = make_engine()
    anthropic_server.script.error(429, retry_after_ms=20).text("Worth the wait.")
    dispatched = dispatch_and_wait(engine, "/ask is it friday yet?")
    assert len(anthropic_server.message_requests) == 2
    assert [r.status for r in anthropic_server.message_requests] == [429, 200]
    assert port.final_texts == {"m1": "Worth the wait."}
    assert assistant_rows(engine, dispatched.conversation.id) == [("Worth the wait.", dispatched.message_id)]


def test_a_500_storm_ends_with_a_plain_message_and_no_half_written_rows(
        make_engine: EngineFactory, anthropic_server: FakeAnthropicServer, caplog) -> None:
    engine, port = make_engine(manifest={"llm": {"max_retries": 2}})
    anthropic_server.script.error(500, retry_after_ms=10, times=5)
    with caplog.at_level(logging.WARNING):
        dispatched = dispatch_and_wait(engine, "/ask what is a monad?")

    assert len(anthropic_server.message_requests) == 3  # the first try and max_retries more
    said = "I couldn't reach the language model (server error 500); please try again in a minute."
    assert port.final_texts == {"m1": said}
    assert assistant_rows(engine, dispatched.conversation.id) == [(said, dispatched.message_id)]
    assert not any(WRITING_MARK in text for text, _ in assistant_rows(engine, dispatched.conversation.id))
    assert not any(record.exc_info or record.levelno >= logging.ERROR for record in caplog.records)
    with engine.db.session() as session:  # a failure is not an exchange worth remembering
        assert Memories(session).for_conversation(dispatched.conversation.id, kind="exchange") == []


def test_overloaded_529_says_so(make_engine: EngineFactory, anthropic_server: FakeAnthropicServer) -> None:
    engine, port = make_engine(manifest={"llm": {"max_retries": 1}})
    anthropic_server.script.error(529, retry_after_ms=10, times=2)
    dispatch_and_wait(engine, "/ask what is a monad?")
    assert port.final_texts["m1"] == ("I couldn't reach the language model (overloaded); please try again in a minute.")


def test_a_stream_that_fails_midway_keeps_what_was_written_and_says_what_happened(
        make_engine: EngineFactory, anthropic_server: FakeAnthropicServer) -> None:
    engine, port = make_engine()
    anthropic_server.script.stream_error("overloaded_error", after_text="The short answer is", chunk_size=5)
    dispatched = dispatch_and_wait(engine, "/ask what is a monad?")
    final = port.final_texts["m1"]
    assert final.startswith("The short answer is") and "stopped midway" in final and "overloaded" in final
    assert assistant_rows(engine, dispatched.conversation.id) == [(final, dispatched.message_id)]


def test_a_timeout_is_retried_and_then_reported(make_engine: EngineFactory,
                                                anthropic_server: FakeAnthropicServer) -> None:
    engine, port = make_engine(manifest={"llm": {"timeout_seconds": 0.5, "max_retries": 1}})
    anthropic_server.script.hang(5, times=2)
    dispatch_and_wait(engine, "/ask what is a monad?")
    assert len(anthropic_server.message_requests) == 2
    assert port.final_texts["m1"] == "I couldn't reach the language model (it timed out); please try again in a minute."


def test_a_refused_key_is_not_called_unreachable(make_engine: EngineFactory) -> None:
    refusing = FakeAnthropicServer(api_key="sk-ant-the-right-key").start()
    try:
        engine, port = make_engine(env={"ANTHROPIC_BASE_URL": refusing.base_url})
        dispatch_and_wait(engine, "/ask what is a monad?")
    finally:
        refusing.stop()
    assert "refused this bot's API key" in port.final_texts["m1"] and "ANTHROPIC_API_KEY" in port.final_texts["m1"]


def test_a_long_answer_keeps_its_head_in_the_message_and_attaches_the_whole(
        make_engine: EngineFactory, anthropic_server: FakeAnthropicServer) -> None:
    engine, port = make_engine()
    paragraph = "This paragraph explains one more detail of the design, at some length.\n\n"
    long_answer = (paragraph * (constants.REPLY_ATTACH_THRESHOLD // len(paragraph) + 20)).strip()
    anthropic_server.script.text(long_answer, chunk_size=2_000)
    dispatch_and_wait(engine, "/ask explain the whole design")
    shown = port.final_texts["m1"]
    assert len(shown) <= constants.REPLY_ATTACH_THRESHOLD + 200 and "attached as `answer.md`" in shown
    (upload,) = port.files
    assert upload.filename == ATTACHMENT_NAME and upload.data.decode() == long_answer


def test_without_an_api_key_the_bot_says_how_to_configure_one(make_engine: EngineFactory,
                                                               anthropic_server: FakeAnthropicServer) -> None:
    engine, port = make_engine(key=False)
    dispatch_and_wait(engine, "/ask what is a monad?")
    assert list(port.final_texts.values()) == [NO_MODEL_CONFIGURED]
    assert "ANTHROPIC_API_KEY" in NO_MODEL_CONFIGURED and "/agent" in NO_MODEL_CONFIGURED
    assert anthropic_server.requests == []
