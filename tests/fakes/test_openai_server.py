"""The scripted OpenAI-compatible fake, on its own and driving the real opencode binary."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.openai_fixtures import OpencodeRun, requires_opencode, run_opencode
from tests.fakes.openai_server import (
    OPENCODE_TOOL_NAMES,
    FakeOpenAIServer,
    Turn,
    tool_results,
    user_texts,
)
from tests.fakes.responses_api import function_outputs, message_texts

TOOLS = [{"type": "function", "function": {"name": "write", "parameters": {"type": "object"}}}]


def _post(server: FakeOpenAIServer, body: dict[str, Any]) -> tuple[int, bytes]:
    req = urllib.request.Request(server.base_url + "/chat/completions",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _sse(raw: bytes) -> list[Any]:
    out: list[Any] = []
    for line in raw.decode().splitlines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


# ---------------------------------------------------------------------------------------------
# The fake on its own
# ---------------------------------------------------------------------------------------------


def test_models_endpoint(openai_server: FakeOpenAIServer) -> None:
    with urllib.request.urlopen(openai_server.base_url + "/models", timeout=5) as r:
        body = json.loads(r.read())
    assert [m["id"] for m in body["data"]] == ["m"]


def test_streaming_tool_call_chunks(openai_server: FakeOpenAIServer) -> None:
    openai_server.script(Turn.write("/w/a.txt", "x" * 100, usage=(11, 22)))
    status, raw = _post(openai_server, {"model": "m", "stream": True, "tools": TOOLS,
                                        "messages": [{"role": "user", "content": "go"}]})
    assert status == 200
    chunks = _sse(raw)
    assert chunks[-1] == "[DONE]"
    body = [c for c in chunks if c != "[DONE]"]
    assert body[0]["choices"][0]["delta"]["role"] == "assistant"
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in body
             if c["choices"] and "tool_calls" in c["choices"][0]["delta"]]
    assert calls[0]["function"]["name"] == "write" and calls[0]["id"].startswith("call_")
    args = json.loads("".join(c["function"]["arguments"] for c in calls))
    assert args == {"filePath": "/w/a.txt", "content": "x" * 100}
    assert len(calls) > 2  # arguments really arrive in several deltas
    last = body[-1]
    assert last["choices"][0]["finish_reason"] == "tool_calls"
    assert last["usage"] == {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33}


def test_non_streaming_and_side_requests(openai_server: FakeOpenAIServer) -> None:
    openai_server.script(Turn.text("scripted answer"))
    # A title request (no tools, title-generator system prompt) does not consume the script.
    status, raw = _post(openai_server, {"model": "m", "messages": [
        {"role": "system", "content": "You are a title generator. You output ONLY a thread title."},
        {"role": "user", "content": "hi"}]})
    assert status == 200
    assert json.loads(raw)["choices"][0]["message"]["content"] == openai_server.side_text
    assert openai_server.remaining == 1
    status, raw = _post(openai_server, {"model": "m", "tools": TOOLS,
                                        "messages": [{"role": "user", "content": "go"}]})
    resp = json.loads(raw)
    assert resp["choices"][0]["message"]["content"] == "scripted answer"
    assert resp["choices"][0]["finish_reason"] == "stop"
    assert resp["usage"]["total_tokens"] == (resp["usage"]["prompt_tokens"]
                                             + resp["usage"]["completion_tokens"])
    # Past the end of the script: a fixed text, counted.
    _post(openai_server, {"model": "m", "tools": TOOLS, "messages": [{"role": "user", "content": "?"}]})
    assert openai_server.exhausted == 1
    assert len(openai_server.requests) == 3
    assert len(openai_server.side_requests) == 1
    assert len(openai_server.scripted_requests) == 2


def test_scripted_http_error(openai_server: FakeOpenAIServer) -> None:
    openai_server.script(Turn.http_error(503, "overloaded"))
    status, raw = _post(openai_server, {"model": "m", "stream": True, "tools": TOOLS,
                                        "messages": [{"role": "user", "content": "go"}]})
    assert status == 503 and b"overloaded" in raw


def _post_responses(server: FakeOpenAIServer, body: dict[str, Any]) -> tuple[int, list[tuple[str, Any]]]:
    req = urllib.request.Request(server.base_url + "/responses", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, [("error", json.loads(e.read()))]
    events = []
    for block in raw.strip().split("\n\n"):
        name, data = block.split("\n", 1)
        events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return 200, events


RESPONSES_TOOLS = [{"type": "function", "name": "exec_command", "parameters": {"type": "object"}}]


def test_responses_stream_a_command_then_text_from_the_same_script(openai_server: FakeOpenAIServer) -> None:
    openai_server.script(Turn.exec_command("echo hi > out.txt", workdir="/w", usage=(11, 22)),
                         Turn.text("done: " + "x" * 60))
    status, events = _post_responses(openai_server, {"model": "m", "stream": True, "tools": RESPONSES_TOOLS,
                                                     "input": [{"type": "message", "role": "user",
                                                                "content": [{"type": "input_text", "text": "go"}]}]})
    assert status == 200
    assert [name for name, _ in events] == ["response.created", "response.output_item.added",
                                            "response.output_item.done", "response.completed"]
    assert all(name == data["type"] for name, data in events)
    call = events[2][1]["item"]
    assert (call["type"], call["name"]) == ("function_call", "exec_command")
    assert json.loads(call["arguments"]) == {"cmd": "echo hi > out.txt", "workdir": "/w"}
    assert events[-1][1]["response"]["usage"]["input_tokens"] == 11
    assert events[-1][1]["response"]["usage"]["output_tokens"] == 22

    # The command's result comes back in the next request, which gets the next turn: text in pieces.
    follow_up = {"model": "m", "stream": True, "tools": RESPONSES_TOOLS, "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go"}]},
        call, {"type": "function_call_output", "call_id": call["call_id"], "output": "Process exited with code 0"}]}
    status, events = _post_responses(openai_server, follow_up)
    deltas = [data["delta"] for name, data in events if name == "response.output_text.delta"]
    assert len(deltas) > 1 and "".join(deltas) == "done: " + "x" * 60
    message = next(data["item"] for name, data in events if name == "response.output_item.done")
    assert message["content"][0] == {"type": "output_text", "text": "done: " + "x" * 60, "annotations": []}
    assert function_outputs(openai_server.scripted_requests[-1])[0]["output"] == "Process exited with code 0"
    assert message_texts(openai_server.scripted_requests[-1], "user") == ["go"]
    assert openai_server.remaining == 0 and len(openai_server.requests) == 2


def test_responses_failures_an_http_error_or_a_failed_response(openai_server: FakeOpenAIServer) -> None:
    openai_server.script(Turn.http_error(500, "scripted failure"), Turn.in_stream_error("the model broke"))
    body = {"model": "m", "stream": True, "input": []}
    assert _post_responses(openai_server, body) == (500, [("error", {"error": {
        "message": "scripted failure", "type": "server_error", "code": "500"}})])
    status, events = _post_responses(openai_server, body)
    assert status == 200 and events[-1][0] == "response.failed"
    assert events[-1][1]["response"]["error"] == {"code": "server_error", "message": "the model broke"}


def test_codex_config_points_codex_at_the_responses_endpoint(openai_server: FakeOpenAIServer, tmp_path) -> None:
    import tomllib

    config = tomllib.loads(Path(openai_server.write_codex_config(tmp_path / "codex-home")).read_text())
    provider = config["model_providers"][config["model_provider"]]
    assert config["model"] == "m" and provider["wire_api"] == "responses"
    assert provider["base_url"] == openai_server.base_url and provider["request_max_retries"] == 0


# ---------------------------------------------------------------------------------------------
# The real opencode binary
# ---------------------------------------------------------------------------------------------

EVENT_TYPES = {"step_start", "tool_use", "text", "step_finish", "reasoning", "error"}


def _assert_well_formed(run: OpencodeRun) -> None:
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert run.events, run.stdout
    sid = run.session_id
    assert sid and sid.startswith("ses_")
    for e in run.events:
        assert e["type"] in EVENT_TYPES, e
        assert isinstance(e["timestamp"], int)
        assert e["sessionID"] == sid
        assert e["part"]["sessionID"] == sid


@requires_opencode
@pytest.mark.opencode
def test_opencode_write_bash_text(openai_server: FakeOpenAIServer, opencode_env) -> None:
    env, ws = opencode_env()
    openai_server.script(
        Turn.write(str(ws / "hello.txt"), "hello from the fake\n"),
        Turn.bash("echo hi > out.txt", "write out.txt"),
        Turn.text("all done", usage=(123, 7)),
    )
    run = run_opencode(env, ws, "make two files")
    _assert_well_formed(run)

    assert (ws / "hello.txt").read_text() == "hello from the fake\n"
    assert (ws / "out.txt").read_text() == "hi\n"

    assert run.types == ["step_start", "tool_use", "step_finish",
                         "step_start", "tool_use", "step_finish",
                         "step_start", "text", "step_finish"]
    write, bash = run.of_type("tool_use")
    assert write["part"]["tool"] == "write"
    assert write["part"]["state"]["status"] == "completed"
    assert write["part"]["state"]["input"]["filePath"] == str(ws / "hello.txt")
    assert bash["part"]["tool"] == "bash"
    assert bash["part"]["state"]["status"] == "completed"
    assert bash["part"]["state"]["metadata"]["exit"] == 0
    assert bash["part"]["callID"] == openai_server.scripted_requests[2]["messages"][-1]["tool_call_id"]
    assert run.of_type("text")[0]["part"]["text"] == "all done"
    finishes = run.of_type("step_finish")
    assert [f["part"]["reason"] for f in finishes] == ["tool-calls", "tool-calls", "stop"]
    assert finishes[-1]["part"]["tokens"]["input"] == 123
    assert finishes[-1]["part"]["tokens"]["output"] == 7
    assert finishes[-1]["part"]["tokens"]["total"] == 130

    # What opencode sent: its tool list, the prompt verbatim from stdin, and the tool outputs.
    assert openai_server.remaining == 0 and openai_server.exhausted == 0
    first = openai_server.scripted_requests[0]
    assert first["stream"] is True
    assert set(OPENCODE_TOOL_NAMES) <= {t["function"]["name"] for t in first["tools"]}
    assert user_texts(first) == ["make two files"]
    outputs = [m["content"] for m in tool_results(openai_server.scripted_requests[-1])]
    assert outputs == ["Wrote file successfully.", "(no output)"]
    # The title request was answered on the side.
    assert len(openai_server.side_requests) <= 1


@requires_opencode
@pytest.mark.opencode
def test_opencode_edit_read_and_session_continue(openai_server: FakeOpenAIServer,
                                                 opencode_env) -> None:
    env, ws = opencode_env()
    target = ws / "notes.txt"
    target.write_text("alpha\nbeta\n")
    openai_server.script(
        Turn.read(str(target)),
        Turn.edit(str(target), "beta", "gamma"),
        Turn.text("edited"),
    )
    first = run_opencode(env, ws, "change beta")
    _assert_well_formed(first)
    assert target.read_text() == "alpha\ngamma\n"
    read, edit = first.of_type("tool_use")
    assert read["part"]["tool"] == "read" and read["part"]["state"]["status"] == "completed"
    assert "beta" in read["part"]["state"]["output"]
    assert edit["part"]["tool"] == "edit" and edit["part"]["state"]["status"] == "completed"
    sid = first.session_id
    n_before = len(openai_server.scripted_requests)

    openai_server.script(Turn.text("second answer"))
    second = run_opencode(env, ws, "and now?", args=["--session", sid])
    _assert_well_formed(second)
    assert second.session_id == sid
    assert second.of_type("text")[-1]["part"]["text"] == "second answer"
    follow_up = openai_server.scripted_requests[n_before]
    assert user_texts(follow_up) == ["change beta", "and now?"]
    msgs = follow_up["messages"]
    called = [c["function"]["name"] for m in msgs for c in m.get("tool_calls") or []]
    assert called == ["read", "edit"]
    assert any(m["role"] == "assistant" and "edited" in json.dumps(m.get("content"))
               for m in msgs)

    # --fork copies the history into a new session.
    openai_server.script(Turn.text("forked answer"))
    n_before = len(openai_server.scripted_requests)
    forked = run_opencode(env, ws, "fork it", args=["--session", sid, "--fork"])
    _assert_well_formed(forked)
    assert forked.session_id != sid
    assert user_texts(openai_server.scripted_requests[n_before]) == [
        "change beta", "and now?", "fork it"]

    # An unknown session id fails cleanly.
    bad = run_opencode(env, ws, "x", args=["--session", "ses_doesnotexist"])
    assert bad.returncode == 1
    assert "Session not found" in bad.stdout + bad.stderr


@requires_opencode
@pytest.mark.opencode
def test_opencode_error_event(openai_server: FakeOpenAIServer, opencode_env) -> None:
    # Model/provider errors are retried for ~73 s (6 attempts) before the error event, so the
    # quick way to see one is an unknown model.
    env, ws = opencode_env()
    run = run_opencode(env, ws, "hi", args=["-m", "local/nosuch"])
    assert run.returncode == 1
    (err,) = run.of_type("error")
    assert err["sessionID"].startswith("ses_")
    assert err["error"]["name"] and err["error"]["data"]["message"]
    assert openai_server.scripted_requests == []


@requires_opencode
@pytest.mark.opencode
@pytest.mark.parametrize("rule", ["deny", "ask"])
def test_opencode_refused_bash_is_a_tool_error(openai_server: FakeOpenAIServer, opencode_env,
                                               rule: str) -> None:
    # A pattern rule: bash stays in the tool list, the matching call ends with status error
    # ("ask" is rejected automatically in `run` mode, it never waits).
    env, ws = opencode_env(permission={"edit": "allow", "bash": {"*": "allow", "echo *": rule},
                                       "external_directory": "deny", "webfetch": "deny"})
    openai_server.script(Turn.bash("echo hi > out.txt"), Turn.text("ok"))
    run = run_opencode(env, ws, "try bash")
    assert not (ws / "out.txt").exists()
    tool = run.of_type("tool_use")
    assert tool and tool[0]["part"]["tool"] == "bash", run.stdout
    assert tool[0]["part"]["state"]["status"] == "error", run.stdout
    assert tool[0]["part"]["state"]["error"]


@requires_opencode
@pytest.mark.opencode
def test_opencode_fully_denied_bash_is_not_offered(openai_server: FakeOpenAIServer,
                                                   opencode_env) -> None:
    # "bash": "deny" removes the tool from the list; a call to it comes back as the
    # pseudo-tool "invalid" with status completed.
    env, ws = opencode_env(permission={"edit": "allow", "bash": "deny",
                                       "external_directory": "deny", "webfetch": "deny"})
    openai_server.script(Turn.bash("echo hi > out.txt"), Turn.text("ok"))
    run = run_opencode(env, ws, "try bash")
    assert run.returncode == 0, run.stderr
    assert not (ws / "out.txt").exists()
    offered = {t["function"]["name"] for t in openai_server.scripted_requests[0]["tools"]}
    assert "bash" not in offered
    tool = run.of_type("tool_use")
    assert tool and tool[0]["part"]["tool"] == "invalid", run.stdout
