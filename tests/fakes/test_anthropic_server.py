"""The fake Anthropic Messages API, driven by the real ``anthropic`` SDK (and raw HTTP)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import anthropic
import pytest

from tests.fakes.anthropic_server import SDK_API_VERSION, FakeAnthropicServer, example_from_schema

MODEL = "claude-sonnet-4-6"
MSGS = [{"role": "user", "content": "hi there"}]
CLASSIFY = {
    "name": "classify",
    "description": "Classify the message.",
    "input_schema": {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": ["bug", "question", "chat"]},
                       "confidence": {"type": "number"},
                       "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["label", "confidence"],
    },
}
FORCE_CLASSIFY = {"type": "tool", "name": "classify"}


def _raw(server: FakeAnthropicServer, path: str, body: Any, headers: dict[str, str]
         ) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(server.base_url + path, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for chunk in raw.decode().split("\n\n"):
        if not chunk.strip():
            continue
        lines = dict(line.split(": ", 1) for line in chunk.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


# -- streaming text ---------------------------------------------------------------------------


def test_streamed_text_arrives_in_several_chunks(anthropic_server: FakeAnthropicServer) -> None:
    text = "Hello **world**, this answer is streamed."
    anthropic_server.script.text(text, chunk_size=5)
    client = anthropic_server.client(max_retries=0)
    with client.messages.stream(model=MODEL, max_tokens=256, messages=MSGS) as stream:
        chunks = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(chunks) >= 3 and len(chunks) == -(-len(text) // 5)
    assert "".join(chunks) == text
    assert final.content[0].type == "text" and final.content[0].text == text
    assert final.stop_reason == "end_turn" and final.role == "assistant"
    assert final.id.startswith("msg_") and final.model == MODEL
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0

    (req,) = anthropic_server.message_requests
    assert req.stream and req.body["model"] == MODEL and req.body["messages"] == MSGS
    assert req.headers["anthropic-version"] == SDK_API_VERSION
    # 2.12 sends api_key as a Bearer token; the value is never recorded.
    assert req.auth == "bearer" and req.headers["authorization"] == "Bearer <redacted>"
    assert anthropic_server.client_key not in json.dumps(req.headers)


def test_delay_between_deltas_is_observable(anthropic_server: FakeAnthropicServer) -> None:
    anthropic_server.script.text("aaaabbbbccccdddd", chunk_size=4, delay=0.1)
    client = anthropic_server.client(max_retries=0)
    stamps = []
    with client.messages.stream(model=MODEL, max_tokens=64, messages=MSGS) as stream:
        for piece in stream.text_stream:
            stamps.append((time.monotonic(), piece))
    assert [p for _, p in stamps] == ["aaaa", "bbbb", "cccc", "dddd"]
    gaps = [b[0] - a[0] for a, b in zip(stamps, stamps[1:], strict=False)]
    assert all(g >= 0.07 for g in gaps), gaps


def test_raw_sse_event_sequence(anthropic_server: FakeAnthropicServer) -> None:
    anthropic_server.script.text("Hello there", chunk_size=4)
    status, headers, raw = _raw(anthropic_server, "/v1/messages",
                                {"model": MODEL, "max_tokens": 10, "messages": MSGS, "stream": True},
                                {"x-api-key": "k", "anthropic-version": "2023-06-01"})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert headers["request-id"].startswith("req_")
    events = _sse(raw)
    names = [e for e, _ in events]
    assert names == ["message_start", "content_block_start", "ping", "content_block_delta",
                     "content_block_delta", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"]
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    assert "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta") == "Hello there"
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
    assert events[-2][1]["usage"]["output_tokens"] > 0
    assert anthropic_server.message_requests[0].auth == "x-api-key"


def test_non_streaming_text(anthropic_server: FakeAnthropicServer) -> None:
    anthropic_server.script.text("plain answer", usage=(11, 3))
    msg = anthropic_server.client(max_retries=0).messages.create(
        model=MODEL, max_tokens=64, messages=MSGS, system="be brief")
    assert msg.type == "message" and msg.content[0].text == "plain answer"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (11, 3)
    assert msg.stop_reason == "end_turn"
    assert anthropic_server.bodies[0]["system"] == "be brief"


def test_async_client_streams(anthropic_server: FakeAnthropicServer) -> None:
    anthropic_server.script.text("async streamed text", chunk_size=6)

    async def run() -> tuple[list[str], str]:
        async with anthropic_server.async_client(max_retries=0) as client:
            async with client.messages.stream(model=MODEL, max_tokens=64, messages=MSGS) as s:
                chunks = [c async for c in s.text_stream]
                final = await s.get_final_message()
        return chunks, final.content[0].text

    chunks, final_text = asyncio.run(run())
    assert len(chunks) == 4 and final_text == "async streamed text"


# -- tool use (structured output) ----------------------------------------------------------------


def test_forced_tool_use_parses_into_dict(anthropic_server: FakeAnthropicServer) -> None:
    verdict = {"label": "bug", "confidence": 0.9, "tags": ["crash", "ui"]}
    anthropic_server.script.tool_use("classify", verdict).tool_use("classify", verdict, chunk_size=7)
    client = anthropic_server.client(max_retries=0)

    msg = client.messages.create(model=MODEL, max_tokens=256, messages=MSGS, tools=[CLASSIFY],
                                 tool_choice=FORCE_CLASSIFY)
    assert msg.stop_reason == "tool_use"
    (block,) = msg.content
    assert block.type == "tool_use" and block.name == "classify" and block.id.startswith("toolu_")
    assert isinstance(block.input, dict) and block.input == verdict

    with client.messages.stream(model=MODEL, max_tokens=256, messages=MSGS, tools=[CLASSIFY],
                                tool_choice=FORCE_CLASSIFY) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert kinds.count("input_json") >= 3
    tool = next(b for b in final.content if b.type == "tool_use")
    assert tool.input == verdict and final.stop_reason == "tool_use"

    body = anthropic_server.bodies[0]
    assert body["tool_choice"] == FORCE_CLASSIFY and body["tools"][0]["name"] == "classify"


def test_tool_use_after_text_block(anthropic_server: FakeAnthropicServer) -> None:
    anthropic_server.script.tool_use("classify", {"label": "chat", "confidence": 1},
                                     text="Let me classify that.")
    msg = anthropic_server.client(max_retries=0).messages.create(
        model=MODEL, max_tokens=64, messages=MSGS, tools=[CLASSIFY])
    assert [b.type for b in msg.content] == ["text", "tool_use"]
    assert msg.content[1].input == {"label": "chat", "confidence": 1}


# -- errors, retries, timeouts ---------------------------------------------------------------------


def test_429_then_success_is_retried(anthropic_server: FakeAnthropicServer) -> None:
    anthropic_server.script.error(429, retry_after=0.05).text("after the retry")
    t0 = time.monotonic()
    msg = anthropic_server.client(max_retries=2).messages.create(
        model=MODEL, max_tokens=64, messages=MSGS)
    assert msg.content[0].text == "after the retry"
    assert time.monotonic() - t0 < 0.4  # retry-after (0.05 s) honoured, not the 0.5 s backoff
    reqs = anthropic_server.message_requests
    assert [r.status for r in reqs] == [429, 200]
    assert [r.headers["x-stainless-retry-count"] for r in reqs] == ["0", "1"]


def test_429_body_and_headers(anthropic_server: FakeAnthropicServer) -> None:
    anthropic_server.script.error(429, retry_after=2)
    with pytest.raises(anthropic.RateLimitError) as ei:
        anthropic_server.client(max_retries=0).messages.create(model=MODEL, max_tokens=8,
                                                               messages=MSGS)
    err = ei.value
    assert err.status_code == 429 and err.type == "rate_limit_error"
    assert err.response.headers["retry-after"] == "2"
    assert err.body["type"] == "error" and err.body["error"]["type"] == "rate_limit_error"
    assert err.request_id and err.request_id.startswith("req_")


def test_500_storm_ends_in_internal_server_error(anthropic_server: FakeAnthropicServer) -> None:
    anthropic_server.script.error(500, retry_after_ms=5, times=3).text("never reached")
    with pytest.raises(anthropic.InternalServerError) as ei:
        anthropic_server.client(max_retries=2).messages.create(model=MODEL, max_tokens=8,
                                                               messages=MSGS)
    assert ei.value.status_code == 500 and ei.value.type == "api_error"
    assert len(anthropic_server.message_requests) == 3
    assert len(anthropic_server.script) == 1  # the text is still queued


def test_529_is_overloaded_error(anthropic_server: FakeAnthropicServer) -> None:
    anthropic_server.script.error(529)
    with pytest.raises(anthropic.OverloadedError) as ei:
        anthropic_server.client(max_retries=0).messages.create(model=MODEL, max_tokens=8,
                                                               messages=MSGS)
    assert isinstance(ei.value, anthropic.InternalServerError)
    assert ei.value.status_code == 529 and ei.value.type == "overloaded_error"
    # ... and it is retried like any 5xx.
    anthropic_server.script.error(529, retry_after_ms=5).text("recovered")
    msg = anthropic_server.client(max_retries=1).messages.create(model=MODEL, max_tokens=8,
                                                                 messages=MSGS)
    assert msg.content[0].text == "recovered"
    assert [r.status for r in anthropic_server.message_requests] == [529, 529, 200]


def test_x_should_retry_false_stops_retries(anthropic_server: FakeAnthropicServer) -> None:
    anthropic_server.script.error(529, should_retry=False)
    with pytest.raises(anthropic.OverloadedError):
        anthropic_server.client(max_retries=3).messages.create(model=MODEL, max_tokens=8,
                                                               messages=MSGS)
    assert len(anthropic_server.message_requests) == 1


def test_hang_beyond_timeout_raises_api_timeout_error(anthropic_server: FakeAnthropicServer) -> None:
    anthropic_server.script.hang(10)
    client = anthropic_server.client(max_retries=0)
    t0 = time.monotonic()
    with pytest.raises(anthropic.APITimeoutError):
        client.messages.create(model=MODEL, max_tokens=8, messages=MSGS, timeout=0.3)
    assert time.monotonic() - t0 < 3
    assert len(anthropic_server.message_requests) == 1


def test_timeouts_are_retried(anthropic_server: FakeAnthropicServer) -> None:
    anthropic_server.script.hang(10, times=2)
    client = anthropic_server.client(max_retries=1, timeout=0.2)
    with pytest.raises(anthropic.APITimeoutError):
        with client.messages.stream(model=MODEL, max_tokens=8, messages=MSGS) as s:
            s.get_final_message()
    assert len(anthropic_server.message_requests) == 2


def test_hang_shorter_than_timeout_then_default(anthropic_server: FakeAnthropicServer) -> None:
    anthropic_server.script.hang(0.2)
    msg = anthropic_server.client(max_retries=0, timeout=5).messages.create(
        model=MODEL, max_tokens=8, messages=MSGS)
    assert msg.content[0].text == "Echo: hi there"


def test_mid_stream_error_event(anthropic_server: FakeAnthropicServer) -> None:
    anthropic_server.script.stream_error("overloaded_error", "Overloaded", after_text="partial ")
    client = anthropic_server.client(max_retries=0)
    got = []
    with pytest.raises(anthropic.APIStatusError) as ei:
        with client.messages.stream(model=MODEL, max_tokens=8, messages=MSGS) as stream:
            for piece in stream.text_stream:
                got.append(piece)
    assert "".join(got) == "partial "
    assert ei.value.type == "overloaded_error"
    # The HTTP status was 200, so the SDK cannot pick a status-specific class.
    assert ei.value.status_code == 200


# -- auth, version, env ---------------------------------------------------------------------------


def test_missing_api_key_is_401(anthropic_server: FakeAnthropicServer) -> None:
    status, _, raw = _raw(anthropic_server, "/v1/messages",
                          {"model": MODEL, "max_tokens": 8, "messages": MSGS},
                          {"anthropic-version": "2023-06-01"})
    assert status == 401
    body = json.loads(raw)
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert anthropic_server.script.consumed == 0


def test_wrong_api_key_via_sdk_is_authentication_error() -> None:
    with FakeAnthropicServer(api_key="sk-right") as server:
        with pytest.raises(anthropic.AuthenticationError):
            server.client(api_key="sk-wrong", max_retries=2).messages.create(
                model=MODEL, max_tokens=8, messages=MSGS)
        assert len(server.message_requests) == 1  # 401 is not retried
        msg = server.client(max_retries=0).messages.create(model=MODEL, max_tokens=8,
                                                           messages=MSGS)
        assert msg.content[0].text == "Echo: hi there"


def test_missing_anthropic_version_is_400(anthropic_server: FakeAnthropicServer) -> None:
    status, _, raw = _raw(anthropic_server, "/v1/messages",
                          {"model": MODEL, "max_tokens": 8, "messages": MSGS}, {"x-api-key": "k"})
    assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"


def test_missing_fields_are_400(anthropic_server: FakeAnthropicServer) -> None:
    client = anthropic_server.client(max_retries=0)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model=MODEL, max_tokens=8, messages=MSGS, tools=[CLASSIFY],
                               tool_choice={"type": "tool", "name": "nope"})


def test_anthropic_base_url_env_is_honoured(anthropic_env: FakeAnthropicServer) -> None:
    anthropic_env.script.text("from env")
    msg = anthropic.Anthropic().messages.create(model=MODEL, max_tokens=8, messages=MSGS)
    assert msg.content[0].text == "from env"
    assert len(anthropic_env.message_requests) == 1


# -- defaults, recording, count_tokens -------------------------------------------------------------


def test_default_echo_and_forced_tool(anthropic_server: FakeAnthropicServer) -> None:
    client = anthropic_server.client(max_retries=0)
    msg = client.messages.create(model=MODEL, max_tokens=8, messages=[
        {"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second"}]}])
    assert msg.content[0].text == "Echo: second"

    msg = client.messages.create(model=MODEL, max_tokens=8, messages=MSGS, tools=[CLASSIFY],
                                 tool_choice=FORCE_CLASSIFY)
    assert msg.content[0].input == {"label": "bug", "confidence": 0.0}
    assert anthropic_server.default_count == 2

    anthropic_server.set_default(lambda body: f"custom: {len(body['messages'])}")
    assert client.messages.create(model=MODEL, max_tokens=8,
                                  messages=MSGS).content[0].text == "custom: 1"
    anthropic_server.set_default("fixed")
    with client.messages.stream(model=MODEL, max_tokens=8, messages=MSGS) as s:
        assert s.get_final_text() == "fixed"


def test_example_from_schema() -> None:
    assert example_from_schema({"type": "object", "properties": {
        "a": {"type": "integer"}, "b": {"type": ["string", "null"]},
        "c": {"anyOf": [{"type": "boolean"}]}, "d": {"type": "string"}},
        "required": ["a", "b", "c"]}) == {"a": 0, "b": "", "c": False}


def test_wait_for_sees_requests_from_other_threads(anthropic_server: FakeAnthropicServer) -> None:
    anthropic_server.script.text("slow slow slow", chunk_size=5, delay=0.2)
    client = anthropic_server.client(max_retries=0)
    out: list[str] = []

    def worker() -> None:
        with client.messages.stream(model=MODEL, max_tokens=8, messages=MSGS) as s:
            out.append(s.get_final_text())

    th = threading.Thread(target=worker)
    th.start()
    reqs = anthropic_server.wait_for(lambda rs: [r for r in rs if r.status == 200], timeout=5)
    assert reqs and not out  # the request is in, the stream is still going
    th.join(5)
    assert out == ["slow slow slow"]
    assert anthropic_server.wait_for(lambda rs: len(rs) >= 5, timeout=0.1) is False


def test_count_tokens(anthropic_server: FakeAnthropicServer) -> None:
    anthropic_server.script.text("queued")
    client = anthropic_server.client(max_retries=0)
    res = client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "x" * 400}])
    assert 100 <= res.input_tokens <= 130
    assert len(anthropic_server.script) == 1  # not consumed
    assert anthropic_server.requests[-1].path == "/v1/messages/count_tokens"
