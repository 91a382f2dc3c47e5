"""A scripted OpenAI-compatible server for tests: chat completions, and the streamed Responses API.

opencode (and anything else that speaks the OpenAI chat-completions protocol) can use it as its
model through a custom provider; see :meth:`FakeOpenAIServer.opencode_config`. The Codex CLI
speaks only the Responses API: ``POST /v1/responses`` is answered from the same script, as
server-sent events (tests/fakes/responses_api.py); see :meth:`FakeOpenAIServer.codex_config`.

The test gives a script: a list of :class:`Turn` objects. Every *scripted* ``POST
/v1/chat/completions`` consumes the next turn, in order. Side requests that opencode makes on its
own (title generation with the small model, which sends no ``tools`` and a "title generator"
system prompt) are answered with a short text and do NOT consume a turn, so scripts stay
deterministic. When the script is exhausted the server answers with ``exhausted_text`` and counts
it in ``server.exhausted``.

Usage::

    server = FakeOpenAIServer([
        Turn.write("hello.txt", "hi\\n"),
        Turn.bash("echo hi > out.txt"),
        Turn.text("done", usage=(100, 7)),
    ]).start()
    cfg = server.opencode_config()          # dict: provider, model, permission, ...
    ...
    server.requests                         # every request body (dicts), in arrival order
    server.scripted_requests                # only the ones that consumed a turn
    server.stop()

Tool names and argument schemas are those opencode 1.18.33 advertises in its ``tools`` list
(recorded from a real request; see tests/fakes/opencode_probe.md):

    write  {filePath (absolute), content}
    edit   {filePath (absolute), oldString, newString, replaceAll?}
    read   {filePath (absolute), offset?, limit?}
    bash   {command, timeout? (ms, int > 0), workdir?}   (+ "description", accepted though
                                                       not in the schema)

For Codex, script ``Turn.exec_command("echo hi > out.txt")`` (its tool ``exec_command``:
``cmd``, optional ``workdir``) and ``Turn.text(...)``; the command's result arrives in the next
request as a ``function_call_output`` item (``responses_api.function_outputs``).

The full ``tools`` list with ``DEFAULT_PERMISSION``: bash, edit, glob, grep, read, skill, task,
todowrite, write (``OPENCODE_TOOL_NAMES``). A class set to plain "deny" (e.g. ``"bash": "deny"``)
removes the tool from the list; a call to it then comes back as the pseudo-tool ``invalid``.

opencode resolves a relative ``filePath`` against its ``--dir``, but its schema asks for an
absolute one; the helpers pass paths through unchanged, so give absolute paths when you can.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from aiohttp import web

from tests.fakes import responses_api
from tests.fakes.loop_thread import LoopThread

#: Marker in opencode's title-generation system prompt (1.18.33: "You are a title generator...").
TITLE_PROMPT_MARKER = "title generator"

#: Tool names opencode 1.18.33 sends in ``tools`` with DEFAULT_PERMISSION (webfetch and question
#: denied; a serve-API session without the question rule adds "question").
OPENCODE_TOOL_NAMES = ("bash", "edit", "glob", "grep", "read", "skill", "task", "todowrite", "write")

#: Every class set explicitly. "question" is denied because a session created through the serve
#: HTTP API (not through `run`, which adds that rule itself) would otherwise offer the model a
#: `question` tool that waits for a human.
DEFAULT_PERMISSION: dict[str, Any] = {
    "edit": "allow",
    "bash": {"*": "allow"},
    "external_directory": "deny",
    "webfetch": "deny",
    "question": "deny",
}

DEFAULT_MODEL = "m"
DEFAULT_PROVIDER = "local"


# --------------------------------------------------------------------------------------------
# Script
# --------------------------------------------------------------------------------------------


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:12])


@dataclass
class Turn:
    """One scripted model answer.

    ``content`` is assistant text (may be combined with tool calls, it is streamed first).
    ``usage`` is ``(prompt_tokens, completion_tokens)``; a default is computed when ``None``.
    ``delay`` sleeps before answering (seconds); ``chunk_delay`` between streamed chunks.
    ``status``/``error`` make the server answer with an HTTP error instead (opencode retries
    any status, 400 and 401 included, after ~2, 4, 8, 16, 32 s and gives up after 6 attempts,
    ~73 s, with an ``error`` event). ``stream_error`` sends an error object
    inside the SSE stream instead (``data: {"error": {...}}``), after any content.
    """

    content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: tuple[int, int] | None = None
    delay: float = 0.0
    chunk_delay: float = 0.0
    status: int = 200
    error: str | None = None
    stream_error: str | None = None
    reasoning: str | None = None
    #: ``(text, other_turn)``: answer with ``other_turn`` instead when the request's messages
    #: contain ``text`` (a steering message reaching the model changes what it does next).
    instead_if: tuple[str, "Turn"] | None = None

    # -- constructors --------------------------------------------------------------------
    @classmethod
    def text(cls, content: str, **kw: Any) -> "Turn":
        return cls(content=content, **kw)

    @classmethod
    def tool(cls, name: str, arguments: dict[str, Any], *, call_id: str | None = None,
             text: str | None = None, **kw: Any) -> "Turn":
        call = ToolCall(name, dict(arguments))
        if call_id is not None:
            call.id = call_id
        return cls(content=text, tool_calls=[call], **kw)

    @classmethod
    def tools(cls, *calls: ToolCall | tuple[str, dict[str, Any]], text: str | None = None,
              **kw: Any) -> "Turn":
        """Several tool calls in one answer (opencode runs them, then asks again)."""
        out = [c if isinstance(c, ToolCall) else ToolCall(c[0], dict(c[1])) for c in calls]
        return cls(content=text, tool_calls=out, **kw)

    @classmethod
    def write(cls, file_path: str, content: str, **kw: Any) -> "Turn":
        return cls.tool("write", write_args(file_path, content), **kw)

    @classmethod
    def edit(cls, file_path: str, old: str, new: str, replace_all: bool = False, **kw: Any) -> "Turn":
        return cls.tool("edit", edit_args(file_path, old, new, replace_all), **kw)

    @classmethod
    def read(cls, file_path: str, offset: int | None = None, limit: int | None = None,
             **kw: Any) -> "Turn":
        return cls.tool("read", read_args(file_path, offset, limit), **kw)

    @classmethod
    def bash(cls, command: str, description: str | None = None, timeout_ms: int | None = None,
             workdir: str | None = None, **kw: Any) -> "Turn":
        return cls.tool("bash", bash_args(command, description, timeout_ms, workdir), **kw)

    @classmethod
    def exec_command(cls, cmd: str, workdir: str | None = None, yield_time_ms: int | None = None,
                     **kw: Any) -> "Turn":
        """A call to Codex's ``exec_command`` tool (Responses API); ``shell`` is its older name."""
        args: dict[str, Any] = {"cmd": cmd}
        if workdir is not None:
            args["workdir"] = str(workdir)
        if yield_time_ms is not None:
            args["yield_time_ms"] = yield_time_ms
        return cls.tool("exec_command", args, **kw)

    @classmethod
    def in_stream_error(cls, message: str = "scripted stream failure", **kw: Any) -> "Turn":
        return cls(stream_error=message, **kw)

    @classmethod
    def http_error(cls, status: int = 500, message: str = "scripted failure", **kw: Any) -> "Turn":
        return cls(status=status, error=message, **kw)


def write_args(file_path: str, content: str) -> dict[str, Any]:
    return {"filePath": str(file_path), "content": content}


def edit_args(file_path: str, old: str, new: str, replace_all: bool = False) -> dict[str, Any]:
    args: dict[str, Any] = {"filePath": str(file_path), "oldString": old, "newString": new}
    if replace_all:
        args["replaceAll"] = True
    return args


def read_args(file_path: str, offset: int | None = None, limit: int | None = None) -> dict[str, Any]:
    args: dict[str, Any] = {"filePath": str(file_path)}
    if offset is not None:
        args["offset"] = offset
    if limit is not None:
        args["limit"] = limit
    return args


def bash_args(command: str, description: str | None = None, timeout_ms: int | None = None,
              workdir: str | None = None) -> dict[str, Any]:
    # 1.18.33's bash schema has only command (required), timeout (ms) and workdir; an extra
    # "description" is accepted and echoed in tool_use.state.input, so it stays optional.
    args: dict[str, Any] = {"command": command}
    if description is not None:
        args["description"] = description
    if timeout_ms is not None:
        args["timeout"] = timeout_ms
    if workdir is not None:
        args["workdir"] = str(workdir)
    return args


# --------------------------------------------------------------------------------------------
# Request classification helpers
# --------------------------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def system_text(body: dict[str, Any]) -> str:
    return "\n".join(_text_of(m.get("content")) for m in body.get("messages", [])
                     if m.get("role") == "system")


def user_texts(body: dict[str, Any]) -> list[str]:
    return [_text_of(m.get("content")) for m in body.get("messages", []) if m.get("role") == "user"]


def tool_results(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``role: tool`` messages of a request (the outputs opencode sends back)."""
    return [m for m in body.get("messages", []) if m.get("role") == "tool"]


def is_side_request(body: dict[str, Any]) -> bool:
    """True for requests opencode makes on its own (title generation, summaries).

    The agent loop always sends its ``tools``; title generation sends none and uses a
    "title generator" system prompt.
    """
    if TITLE_PROMPT_MARKER in system_text(body).lower():
        return True
    return not body.get("tools")


# --------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------


class FakeOpenAIServer:
    """Scripted chat-completions server on 127.0.0.1, served from a background thread."""

    def __init__(self, turns: Iterable[Turn] = (), *, model: str = DEFAULT_MODEL,
                 host: str = "127.0.0.1", port: int = 0, side_text: str = "Test session",
                 exhausted_text: str = "(fake model: script exhausted)",
                 is_side: Callable[[dict[str, Any]], bool] = is_side_request) -> None:
        self.model = model
        self.host = host
        self.port = port
        self.side_text = side_text
        self.exhausted_text = exhausted_text
        self.is_side = is_side
        self._lock = threading.Lock()
        self._turns: list[Turn] = list(turns)
        self._next = 0
        self.requests: list[dict[str, Any]] = []
        self.request_times: list[float] = []  # time.monotonic() of each entry in requests
        self.scripted_requests: list[dict[str, Any]] = []
        self.side_requests: list[dict[str, Any]] = []
        self.other_requests: list[tuple[str, str]] = []  # (method, path) of anything else
        self.models_calls = 0  # GET /v1/models
        self.exhausted = 0
        self._turn_cond = threading.Condition(self._lock)
        self._loop_thread = LoopThread("fake-openai")
        self._runner: web.AppRunner | None = None
        self._ids = itertools.count(1)

    # -- script management ---------------------------------------------------------------
    def script(self, *turns: Turn) -> "FakeOpenAIServer":
        """Append turns to the script."""
        with self._lock:
            self._turns.extend(turns)
        return self

    def reset(self, turns: Iterable[Turn] = ()) -> None:
        with self._lock:
            self._turns = list(turns)
            self._next = 0
            self.exhausted = 0
            self.requests.clear()
            self.request_times.clear()
            self.scripted_requests.clear()
            self.side_requests.clear()
            self.other_requests.clear()

    @property
    def remaining(self) -> int:
        with self._lock:
            return len(self._turns) - self._next

    @property
    def consumed(self) -> int:
        with self._lock:
            return self._next

    def wait_for_turns(self, n: int, timeout: float = 30.0) -> bool:
        """Block until at least ``n`` scripted turns have been consumed."""
        deadline = time.monotonic() + timeout
        with self._turn_cond:
            while self._next < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._turn_cond.wait(left)
            return True

    # -- addresses and configs -----------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def provider_config(self, provider: str = DEFAULT_PROVIDER) -> dict[str, Any]:
        return {
            provider: {
                "npm": "@ai-sdk/openai-compatible",
                "name": "Fake",
                "options": {"baseURL": self.base_url, "apiKey": "x"},
                "models": {self.model: {"name": self.model, "tool_call": True,
                                        "limit": {"context": 128000, "output": 8192}}},
            }
        }

    def opencode_config(self, *, provider: str = DEFAULT_PROVIDER,
                        permission: dict[str, Any] | None = None,
                        **extra: Any) -> dict[str, Any]:
        """A complete opencode config (``OPENCODE_CONFIG``) that uses this server as model."""
        if permission is None:
            permission = dict(DEFAULT_PERMISSION)
        cfg: dict[str, Any] = {
            "$schema": "https://opencode.ai/config.json",
            "provider": self.provider_config(provider),
            "model": f"{provider}/{self.model}",
            "small_model": f"{provider}/{self.model}",
            "autoupdate": False,
            "share": "disabled",
            "permission": permission,
        }
        cfg.update(extra)
        return cfg

    def write_opencode_config(self, path: Any, **kw: Any) -> str:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.opencode_config(**kw), f, indent=2)
        return str(path)

    def codex_config(self, *, provider: str = "fake", retries: int = 0) -> str:
        """A Codex ``config.toml`` (the user's own) whose model is this server, over the Responses API.

        ``retries`` sets the provider's request and stream retries (Codex's defaults retry a 500
        several times with backoff; a test of a failure wants it at once).
        """
        return (f'model = "{self.model}"\nmodel_provider = "{provider}"\n\n'
                f'[model_providers.{provider}]\nname = "Fake"\nbase_url = "{self.base_url}"\n'
                f'wire_api = "responses"\nrequest_max_retries = {retries}\nstream_max_retries = {retries}\n')

    def write_codex_config(self, codex_home: Any, **kw: Any) -> str:
        """Write :meth:`codex_config` as ``config.toml`` in a ``CODEX_HOME``; return its path."""
        import pathlib

        home = pathlib.Path(codex_home)
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(self.codex_config(**kw), encoding="utf-8")
        return str(home / "config.toml")

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> "FakeOpenAIServer":
        self._loop_thread.start(self._astart)
        return self

    async def _astart(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/chat/completions", self._chat)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/responses", self._responses)
        app.router.add_route("*", "/{tail:.*}", self._other)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        self._loop_thread.stop(self._runner.cleanup if self._runner else None)

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- handlers -------------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        with self._lock:
            self.models_calls += 1
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "fake"}]})

    async def _other(self, request: web.Request) -> web.Response:
        with self._lock:
            self.other_requests.append((request.method, request.path))
        return web.json_response({"error": {"message": "not found", "type": "not_found"}},
                                 status=404)

    def _take(self, body: dict[str, Any]) -> tuple[Turn, bool]:
        """Record the body and pick the answer; returns (turn, scripted)."""
        with self._turn_cond:
            self.requests.append(body)
            self.request_times.append(time.monotonic())
            if self.is_side(body):
                self.side_requests.append(body)
                return Turn.text(self.side_text, usage=(10, 3)), False
            self.scripted_requests.append(body)
            if self._next < len(self._turns):
                turn = self._turns[self._next]
                self._next += 1
                self._turn_cond.notify_all()
                if turn.instead_if is not None and turn.instead_if[0] in json.dumps(body.get("messages")):
                    turn = turn.instead_if[1]
                return turn, True
            self.exhausted += 1
            return Turn.text(self.exhausted_text), True

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except Exception:
            return web.json_response({"error": {"message": "bad json"}}, status=400)
        turn, _scripted = self._take(body)
        if turn.delay:
            await asyncio.sleep(turn.delay)
        if turn.status != 200 or turn.error:
            return web.json_response(
                {"error": {"message": turn.error or "error", "type": "server_error",
                           "code": turn.status}}, status=turn.status or 500)
        cid = f"chatcmpl-{next(self._ids)}"
        created = int(time.time())
        model = body.get("model", self.model)
        usage = self._usage(body, turn)
        finish = "tool_calls" if turn.tool_calls else "stop"
        if not body.get("stream"):
            msg: dict[str, Any] = {"role": "assistant", "content": turn.content}
            if turn.tool_calls:
                msg["tool_calls"] = [
                    {"id": c.id, "type": "function",
                     "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                    for c in turn.tool_calls]
            return web.json_response({
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
                "usage": usage})

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def send(choices: list[dict[str, Any]], **more: Any) -> None:
            chunk = {"id": cid, "object": "chat.completion.chunk", "created": created,
                     "model": model, "choices": choices, **more}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            if turn.chunk_delay:
                await asyncio.sleep(turn.chunk_delay)

        def delta(d: dict[str, Any]) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": d, "finish_reason": None}]

        try:
            await send(delta({"role": "assistant", "content": ""}))
            if turn.reasoning:
                await send(delta({"reasoning_content": turn.reasoning}))
            if turn.content:
                for piece in _pieces(turn.content):
                    await send(delta({"content": piece}))
            for i, c in enumerate(turn.tool_calls):
                args = json.dumps(c.arguments)
                await send(delta({"tool_calls": [{"index": i, "id": c.id, "type": "function",
                                                   "function": {"name": c.name, "arguments": ""}}]}))
                for piece in _pieces(args):
                    await send(delta({"tool_calls": [{"index": i,
                                                      "function": {"arguments": piece}}]}))
            if turn.stream_error:
                err = {"error": {"message": turn.stream_error, "type": "server_error",
                                 "code": "fake_error"}}
                await resp.write(b"data: " + json.dumps(err).encode() + b"\n\n")
                await resp.write_eof()
                return resp
            await send([{"index": 0, "delta": {}, "finish_reason": finish}], usage=usage)
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the client went away (abort); nothing else to do
        return resp

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        """Answer a Responses API request with the next turn, streamed (every request is scripted)."""
        try:
            body = await request.json()
        except Exception:
            return web.json_response({"error": {"message": "bad json"}}, status=400)
        turn = self._take_scripted(body)
        if turn.delay:
            await asyncio.sleep(turn.delay)
        if turn.status != 200 or turn.error:
            return web.json_response({"error": {"message": turn.error or "error", "type": "server_error",
                                                 "code": str(turn.status)}}, status=turn.status or 500)
        usage = self._usage({"messages": body.get("input", [])}, turn)
        events = responses_api.stream_events(turn, f"resp_{next(self._ids)}", body.get("model", self.model), usage)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        try:
            for event in events:
                await resp.write(responses_api.sse(event))
                if turn.chunk_delay:
                    await asyncio.sleep(turn.chunk_delay)
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the client went away (cancel); nothing else to do
        return resp

    def _take_scripted(self, body: dict[str, Any]) -> Turn:
        """Record a request that always consumes a turn (no side requests); return the answer."""
        with self._turn_cond:
            self.requests.append(body)
            self.request_times.append(time.monotonic())
            self.scripted_requests.append(body)
            if self._next < len(self._turns):
                turn = self._turns[self._next]
                self._next += 1
                self._turn_cond.notify_all()
                return turn
            self.exhausted += 1
            return Turn.text(self.exhausted_text)

    @staticmethod
    def _usage(body: dict[str, Any], turn: Turn) -> dict[str, int]:
        if turn.usage is not None:
            p, c = turn.usage
        else:
            p = max(1, len(json.dumps(body.get("messages", []))) // 4)
            c = max(1, (len(turn.content or "")
                        + sum(len(json.dumps(t.arguments)) for t in turn.tool_calls)) // 4)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _pieces(s: str, size: int = 24) -> Sequence[str]:
    return [s[i:i + size] for i in range(0, len(s), size)] or [""]
