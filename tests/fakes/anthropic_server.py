"""A scripted, local Anthropic Messages API for tests, served on 127.0.0.1 from a background thread.

Point the real ``anthropic`` SDK at it (``Anthropic(base_url=server.base_url, api_key=...)``, or
``ANTHROPIC_BASE_URL`` + ``ANTHROPIC_API_KEY``; see :meth:`FakeAnthropicServer.env`)::

    server = FakeAnthropicServer().start()
    server.script.text("Hello **world**", chunk_size=5, delay=0.05)      # streamed in 5-char deltas
    server.script.tool_use("classify", {"label": "bug"})                  # forced tool_choice answer
    server.script.error(429, retry_after_ms=10).text("after the retry")   # chainable
    server.script.error(500, times=3)                                     # a storm of 500s
    server.script.hang(5)                                                 # no answer for 5 s
    client = server.client(max_retries=2)
    ...
    server.requests            # every request (RecordedRequest), api key values redacted
    server.message_requests    # only POST /v1/messages
    server.wait_for(lambda reqs: len(reqs) >= 2, timeout=5)
    server.stop()

Each ``POST /v1/messages`` that passes the header checks consumes the next scripted entry; the
same entry answers a streaming (``"stream": true``, SSE) or a plain request. With the script
empty the server answers with the default: ``"Echo: <last user text>"``, or, when the request
forces ``tool_choice`` to a tool, a ``tool_use`` whose input is a minimal instance of that
tool's ``input_schema``. :meth:`FakeAnthropicServer.set_default` replaces it.

Wire format (checked against anthropic 2.12.0):

* Auth: the SDK sends ``api_key`` as ``Authorization: Bearer <key>``; the public API also takes
  ``x-api-key``. Either is accepted; neither gives ``401 authentication_error``. Set
  ``api_key=`` on the server to also reject other keys.
* ``anthropic-version`` is required (``400 invalid_request_error`` without it); 2.12.0 sends
  ``2026-10-21``.
* Errors: ``{"type": "error", "error": {"type": ..., "message": ...}, "request_id": ...}`` plus a
  ``request-id`` header (also on successes).
* Stream: message_start, then per block content_block_start, (ping after the first start),
  content_block_delta (``text_delta`` / ``input_json_delta``), content_block_stop; then
  message_delta (stop_reason, usage.output_tokens), message_stop. Every event is
  ``event: <type>\\ndata: <json>\\n\\n``.
* ``POST /v1/messages/count_tokens`` answers ``{"input_tokens": chars/4}``; it never consumes
  the script.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Union

from aiohttp import web

from tests.fakes.loop_thread import LoopThread

DEFAULT_MODEL = "claude-sonnet-4-6"
#: What anthropic 2.12.0 sends as ``anthropic-version``.
SDK_API_VERSION = "2026-10-21"
DEFAULT_API_KEY = "sk-ant-test-key"

#: error ``type`` per HTTP status, as the API documents them.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_STATUS_OF_TYPE = {"invalid_request_error": 400, "authentication_error": 401,
                   "permission_error": 403, "not_found_error": 404, "rate_limit_error": 429,
                   "api_error": 500, "overloaded_error": 529, "timeout_error": 504}
ERROR_MESSAGES = {
    "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit",
    "api_error": "Internal server error",
    "overloaded_error": "Overloaded",
    "authentication_error": "invalid x-api-key",
}

_REDACTED = "<redacted>"


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


# --------------------------------------------------------------------------------------------
# Script entries
# --------------------------------------------------------------------------------------------


@dataclass
class Block:
    """One content block of a scripted answer: ``text`` or ``tool_use``."""

    type: str  # "text" | "tool_use"
    text: str = ""
    name: str = ""
    input: dict[str, Any] = field(default_factory=dict)
    id: str = ""

    def to_wire(self) -> dict[str, Any]:
        if self.type == "text":
            return {"type": "text", "text": self.text}
        return {"type": "tool_use", "id": self.id, "name": self.name, "input": self.input}


@dataclass
class Reply:
    """A successful answer. ``delay`` is slept between streamed deltas (not before the first)."""

    blocks: list[Block]
    stop_reason: str = "end_turn"
    stop_sequence: str | None = None
    chunk_size: int = 8
    delay: float = 0.0
    usage: tuple[int, int] | None = None  # (input_tokens, output_tokens); estimated when None
    model: str | None = None  # defaults to the request's model

    @property
    def text(self) -> str:
        return "".join(b.text for b in self.blocks if b.type == "text")


@dataclass
class ErrorReply:
    """An HTTP error answer (before any stream starts)."""

    status: int
    type: str
    message: str
    retry_after: float | str | None = None
    retry_after_ms: float | None = None
    should_retry: bool | None = None  # x-should-retry header, which the SDK obeys
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Hang:
    """Send nothing for ``seconds`` (until the server stops), then answer with the default."""

    seconds: float


@dataclass
class StreamError:
    """A stream that starts (200, message_start, maybe some text) then sends an ``error`` event.

    A non-streaming request gets the equivalent HTTP error instead.
    """

    type: str = "overloaded_error"
    message: str = "Overloaded"
    after_text: str = ""
    chunk_size: int = 8
    delay: float = 0.0


Entry = Union[Reply, ErrorReply, Hang, StreamError]
DefaultFn = Callable[[dict[str, Any]], Union[str, Entry]]


class Script:
    """Queue of scripted answers; methods return the script so calls chain."""

    def __init__(self, cond: threading.Condition) -> None:
        self._cond = cond
        self._entries: list[Entry] = []
        self.consumed = 0

    # -- builders ------------------------------------------------------------------------
    def add(self, *entries: Entry) -> "Script":
        with self._cond:
            self._entries.extend(entries)
        return self

    def text(self, text: str, *, chunk_size: int = 8, delay: float = 0.0,
             stop_reason: str = "end_turn", usage: tuple[int, int] | None = None,
             model: str | None = None, times: int = 1) -> "Script":
        """A text answer, streamed in ``chunk_size``-char ``text_delta`` events."""
        return self.add(*[Reply([Block("text", text=text)], stop_reason=stop_reason,
                                chunk_size=chunk_size, delay=delay, usage=usage, model=model)
                          for _ in range(times)])

    def tool_use(self, name: str, input: dict[str, Any], *, text: str | None = None,
                 id: str | None = None, chunk_size: int = 16, delay: float = 0.0,
                 stop_reason: str = "tool_use", usage: tuple[int, int] | None = None,
                 model: str | None = None) -> "Script":
        """A ``tool_use`` block (after an optional text block), ``stop_reason="tool_use"``.

        Streamed as ``input_json_delta`` pieces of ``json.dumps(input)``.
        """
        blocks = [Block("text", text=text)] if text else []
        blocks.append(Block("tool_use", name=name, input=dict(input), id=id or _new_id("toolu_")))
        return self.add(Reply(blocks, stop_reason=stop_reason, chunk_size=chunk_size,
                              delay=delay, usage=usage, model=model))

    def reply(self, blocks: Iterable[Block | dict[str, Any] | str], **kw: Any) -> "Script":
        """Several blocks: ``Block``s, strings (text) or wire dicts (``{"type": "tool_use", ...}``)."""
        out: list[Block] = []
        for b in blocks:
            if isinstance(b, Block):
                out.append(b)
            elif isinstance(b, str):
                out.append(Block("text", text=b))
            elif b.get("type") == "text":
                out.append(Block("text", text=b.get("text", "")))
            else:
                out.append(Block("tool_use", name=b["name"], input=dict(b.get("input", {})),
                                 id=b.get("id") or _new_id("toolu_")))
        if "stop_reason" not in kw and any(b.type == "tool_use" for b in out):
            kw["stop_reason"] = "tool_use"
        return self.add(Reply(out, **kw))

    def error(self, status: int, type: str | None = None, message: str | None = None,
              retry_after: float | str | None = None, *, retry_after_ms: float | None = None,
              should_retry: bool | None = None, headers: dict[str, str] | None = None,
              times: int = 1) -> "Script":
        """An HTTP error: 429 rate_limit_error, 500 api_error, 529 overloaded_error, ...

        ``retry_after`` is sent verbatim as ``retry-after`` (seconds; the SDK accepts floats),
        ``retry_after_ms`` as ``retry-after-ms`` (the SDK prefers it).
        """
        etype = type or ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        msg = message or ERROR_MESSAGES.get(etype, etype.replace("_", " "))
        return self.add(*[ErrorReply(status, etype, msg, retry_after, retry_after_ms,
                                     should_retry, dict(headers or {})) for _ in range(times)])

    def hang(self, seconds: float, *, times: int = 1) -> "Script":
        """Answer nothing for ``seconds`` (to trip client timeouts)."""
        return self.add(*[Hang(seconds) for _ in range(times)])

    def stream_error(self, type: str = "overloaded_error", message: str = "Overloaded", *,
                     after_text: str = "", chunk_size: int = 8, delay: float = 0.0) -> "Script":
        """A stream that fails midway with an SSE ``error`` event."""
        return self.add(StreamError(type, message, after_text, chunk_size, delay))

    # -- inspection ----------------------------------------------------------------------
    def clear(self) -> None:
        with self._cond:
            self._entries.clear()

    @property
    def pending(self) -> list[Entry]:
        with self._cond:
            return list(self._entries)

    def __len__(self) -> int:
        with self._cond:
            return len(self._entries)

    def _pop(self) -> Entry | None:  # caller holds the lock
        if not self._entries:
            return None
        self.consumed += 1
        return self._entries.pop(0)


# --------------------------------------------------------------------------------------------
# Recorded requests and request helpers
# --------------------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names; x-api-key / authorization values redacted
    body: Any  # parsed JSON (None when absent or not JSON)
    status: int = 0  # the status answered (filled in when decided)
    auth: str | None = None  # "x-api-key" | "bearer" | None: how the key came
    time: float = field(default_factory=time.monotonic)

    @property
    def stream(self) -> bool:
        return isinstance(self.body, dict) and bool(self.body.get("stream"))

    @property
    def last_user_text(self) -> str:
        return last_user_text(self.body if isinstance(self.body, dict) else {})

    @property
    def tool_choice(self) -> dict[str, Any] | None:
        return self.body.get("tool_choice") if isinstance(self.body, dict) else None


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and p.get("type", "text") == "text")
    return ""


def last_user_text(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "user":
            return content_text(m.get("content"))
    return ""


def estimate_tokens(*parts: Any) -> int:
    n = sum(len(p if isinstance(p, str) else json.dumps(p)) for p in parts if p is not None)
    return max(1, n // 4)


def forced_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool definition a request forces with ``tool_choice: {"type": "tool", "name": ...}``."""
    tc = body.get("tool_choice")
    if not isinstance(tc, dict) or tc.get("type") != "tool":
        return None
    for t in body.get("tools") or []:
        if isinstance(t, dict) and t.get("name") == tc.get("name"):
            return t
    return None


def example_from_schema(schema: Any) -> Any:
    """A small deterministic instance of a JSON schema (required properties only)."""
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return example_from_schema(schema[key][0])
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "null")
    if t == "object" or (t is None and "properties" in schema):
        props = schema.get("properties") or {}
        return {k: example_from_schema(props.get(k, {})) for k in schema.get("required", [])}
    if t == "array":
        n = int(schema.get("minItems", 0))
        return [example_from_schema(schema.get("items", {})) for _ in range(n)]
    if t == "string":
        return "x" * int(schema.get("minLength", 0))
    if t == "integer":
        return int(schema.get("minimum", 0))
    if t == "number":
        return float(schema.get("minimum", 0))
    if t == "boolean":
        return False
    return None


def default_answer(body: dict[str, Any]) -> Entry:
    """The answer when the script is empty: a schema-shaped tool_use if a tool is forced, else echo."""
    tool = forced_tool(body)
    if tool is not None:
        inp = example_from_schema(tool.get("input_schema") or {"type": "object"})
        return Reply([Block("tool_use", name=tool["name"], id=_new_id("toolu_"),
                            input=inp if isinstance(inp, dict) else {})], stop_reason="tool_use")
    return Reply([Block("text", text=f"Echo: {last_user_text(body)}")])


# --------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------


class FakeAnthropicServer:
    """A scripted Anthropic Messages API on 127.0.0.1 (free port), served from a background thread."""

    def __init__(self, *, api_key: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 model: str = DEFAULT_MODEL, require_version: bool = True) -> None:
        #: When set, only this key is accepted; otherwise any non-empty key is.
        self.api_key = api_key
        self.host = host
        self.port = port
        self.model = model
        self.require_version = require_version
        self._cond = threading.Condition(threading.Lock())
        self.script = Script(self._cond)
        self._requests: list[RecordedRequest] = []
        self._default: DefaultFn | None = None
        self.default_count = 0  # /v1/messages answered by the default (script empty)
        self._loop_thread = LoopThread("fake-anthropic")
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._ids = itertools.count(1)

    # -- addresses and clients -----------------------------------------------------------
    @property
    def base_url(self) -> str:
        """What the SDK takes as ``base_url`` / ``ANTHROPIC_BASE_URL`` (it appends ``/v1/...``)."""
        return f"http://{self.host}:{self.port}"

    url = base_url

    @property
    def client_key(self) -> str:
        return self.api_key or DEFAULT_API_KEY

    def env(self) -> dict[str, str]:
        """Environment for ``Anthropic()`` to find this server."""
        return {"ANTHROPIC_BASE_URL": self.base_url, "ANTHROPIC_API_KEY": self.client_key}

    def client(self, **kw: Any) -> Any:
        import anthropic
        kw.setdefault("base_url", self.base_url)
        kw.setdefault("api_key", self.client_key)
        return anthropic.Anthropic(**kw)

    def async_client(self, **kw: Any) -> Any:
        import anthropic
        kw.setdefault("base_url", self.base_url)
        kw.setdefault("api_key", self.client_key)
        return anthropic.AsyncAnthropic(**kw)

    # -- defaults ------------------------------------------------------------------------
    def set_default(self, answer: str | Entry | DefaultFn | None) -> None:
        """What an empty script answers: a fixed text, an entry, ``fn(body) -> str | entry``,
        or ``None`` for the built-in echo / forced-tool default."""
        if answer is None or callable(answer):
            fn = answer
        elif isinstance(answer, str):
            fn = lambda body, _t=answer: _t  # noqa: E731
        else:
            fn = lambda body, _e=answer: _e  # noqa: E731
        with self._cond:
            self._default = fn

    # -- recorded requests ---------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received (a snapshot), in arrival order."""
        with self._cond:
            return list(self._requests)

    @property
    def message_requests(self) -> list[RecordedRequest]:
        """Only ``POST /v1/messages``."""
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/messages"]

    @property
    def bodies(self) -> list[Any]:
        """JSON bodies of the ``POST /v1/messages`` requests."""
        return [r.body for r in self.message_requests]

    def clear_requests(self) -> None:
        with self._cond:
            self._requests.clear()

    def reset(self) -> None:
        """Forget requests and pending script entries; restore the default answer."""
        with self._cond:
            self._requests.clear()
            self.script._entries.clear()
            self.script.consumed = 0
            self.default_count = 0
            self._default = None

    def wait_for(self, predicate: Callable[[list[RecordedRequest]], Any],
                 timeout: float = 10.0) -> Any:
        """Block until ``predicate(requests)`` is truthy; returns its value (falsy on timeout).

        Re-evaluated whenever a request arrives or its status is decided.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(list(self._requests))
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    return value
                self._cond.wait(left)

    def wait_for_requests(self, n: int, timeout: float = 10.0, *,
                          path: str = "/v1/messages") -> list[RecordedRequest]:
        """Wait for at least ``n`` requests to ``path``; returns them (fewer on timeout)."""
        def pred(reqs: list[RecordedRequest]) -> list[RecordedRequest] | None:
            hit = [r for r in reqs if r.path == path]
            return hit if len(hit) >= n else None
        return self.wait_for(pred, timeout) or [r for r in self.requests if r.path == path]

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> "FakeAnthropicServer":
        self._loop_thread.start(self._astart)
        return self

    async def _astart(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        app.router.add_route("*", "/{tail:.*}", self._other)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _ashutdown(self) -> None:
        assert self._stopping is not None
        self._stopping.set()  # wakes hangs and delays
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        self._loop_thread.stop(self._ashutdown)

    def __enter__(self) -> "FakeAnthropicServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- plumbing -------------------------------------------------------------------------
    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless the server stops first; False if it is stopping."""
        if seconds <= 0:
            return not (self._stopping and self._stopping.is_set())
        assert self._stopping is not None
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
            return False
        except asyncio.TimeoutError:
            return True

    async def _record(self, request: web.Request) -> RecordedRequest:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers: dict[str, str] = {}
        auth = None
        for k, v in request.headers.items():
            lk = k.lower()
            if lk == "x-api-key":
                auth = auth or ("x-api-key" if v else None)
                v = _REDACTED
            elif lk == "authorization":
                if v.lower().startswith("bearer ") and v[7:].strip():
                    auth = auth or "bearer"
                v = (v.split(" ", 1)[0] + " " + _REDACTED) if " " in v else _REDACTED
            headers[lk] = v
        rec = RecordedRequest(request.method, request.path, headers, body, auth=auth)
        with self._cond:
            self._requests.append(rec)
            self._cond.notify_all()
        return rec

    def _set_status(self, rec: RecordedRequest, status: int) -> None:
        with self._cond:
            rec.status = status
            self._cond.notify_all()

    def _key_of(self, request: web.Request) -> str | None:
        key = request.headers.get("x-api-key")
        if key:
            return key
        authz = request.headers.get("authorization", "")
        if authz.lower().startswith("bearer ") and authz[7:].strip():
            return authz[7:].strip()
        return None

    def _error_response(self, rec: RecordedRequest, status: int, etype: str, message: str,
                        headers: dict[str, str] | None = None) -> web.Response:
        rid = _new_id("req_")
        self._set_status(rec, status)
        return web.json_response(
            {"type": "error", "error": {"type": etype, "message": message}, "request_id": rid},
            status=status, headers={"request-id": rid, **(headers or {})})

    def _check(self, request: web.Request, rec: RecordedRequest) -> web.Response | None:
        """Auth and version checks, as the API does them (auth first)."""
        key = self._key_of(request)
        if key is None:
            return self._error_response(rec, 401, "authentication_error",
                                        "x-api-key header is required")
        if self.api_key is not None and key != self.api_key:
            return self._error_response(rec, 401, "authentication_error", "invalid x-api-key")
        if self.require_version and not request.headers.get("anthropic-version"):
            return self._error_response(rec, 400, "invalid_request_error",
                                        "anthropic-version: header is required")
        if not isinstance(rec.body, dict):
            return self._error_response(rec, 400, "invalid_request_error",
                                        "The request body is not valid JSON.")
        return None

    # -- handlers -------------------------------------------------------------------------
    async def _other(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        return self._error_response(rec, 404, "not_found_error", f"Not found: {request.path}")

    async def _count_tokens(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        bad = self._check(request, rec)
        if bad is not None:
            return bad
        body = rec.body
        n = estimate_tokens(body.get("system"), body.get("messages"), body.get("tools"))
        self._set_status(rec, 200)
        return web.json_response({"input_tokens": n}, headers={"request-id": _new_id("req_")})

    def _validate(self, body: dict[str, Any]) -> str | None:
        for name in ("model", "max_tokens", "messages"):
            if name not in body:
                return f"{name}: Field required"
        if not isinstance(body["messages"], list) or not body["messages"]:
            return "messages: at least one message is required"
        tc = body.get("tool_choice")
        if isinstance(tc, dict) and tc.get("type") == "tool" and forced_tool(body) is None:
            return f"tool_choice: tool {tc.get('name')!r} not found in tools"
        return None

    def _next_entry(self, body: dict[str, Any]) -> Entry:
        with self._cond:
            entry = self.script._pop()
            self._cond.notify_all()
            if entry is not None:
                return entry
            self.default_count += 1
            fn = self._default
        if fn is None:
            return default_answer(body)
        out = fn(body)
        return Reply([Block("text", text=out)]) if isinstance(out, str) else out

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        bad = self._check(request, rec)
        if bad is not None:
            return bad
        body: dict[str, Any] = rec.body
        problem = self._validate(body)
        if problem:
            return self._error_response(rec, 400, "invalid_request_error", problem)
        entry = self._next_entry(body)

        if isinstance(entry, Hang):
            if not await self._sleep(entry.seconds):
                self._set_status(rec, 503)
                return web.Response(status=503)
            entry = self._next_default(body)

        if isinstance(entry, ErrorReply):
            headers = dict(entry.headers)
            if entry.retry_after is not None:
                headers["retry-after"] = str(entry.retry_after)
            if entry.retry_after_ms is not None:
                headers["retry-after-ms"] = str(entry.retry_after_ms)
            if entry.should_retry is not None:
                headers["x-should-retry"] = "true" if entry.should_retry else "false"
            return self._error_response(rec, entry.status, entry.type, entry.message, headers)

        if isinstance(entry, StreamError) and not body.get("stream"):
            return self._error_response(rec, _STATUS_OF_TYPE.get(entry.type, 500), entry.type,
                                        entry.message)

        model = (entry.model if isinstance(entry, Reply) else None) or body.get("model") or self.model
        msg_id = _new_id("msg_")
        in_tokens = estimate_tokens(body.get("system"), body.get("messages"), body.get("tools"))
        if isinstance(entry, Reply) and entry.usage is not None:
            in_tokens, out_tokens = entry.usage
        elif isinstance(entry, Reply):
            out_tokens = estimate_tokens(*[b.text if b.type == "text" else b.input
                                           for b in entry.blocks])
        else:
            out_tokens = estimate_tokens(entry.after_text)

        if not body.get("stream"):
            assert isinstance(entry, Reply)
            self._set_status(rec, 200)
            return web.json_response(
                {"id": msg_id, "type": "message", "role": "assistant", "model": model,
                 "content": [b.to_wire() for b in entry.blocks],
                 "stop_reason": entry.stop_reason, "stop_sequence": entry.stop_sequence,
                 "usage": {"input_tokens": in_tokens, "output_tokens": out_tokens,
                           "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}},
                headers={"request-id": _new_id("req_")})

        return await self._stream(request, rec, entry, msg_id, model, in_tokens, out_tokens)

    def _next_default(self, body: dict[str, Any]) -> Entry:
        fn = self._default
        out = fn(body) if fn is not None else default_answer(body)
        return Reply([Block("text", text=out)]) if isinstance(out, str) else out

    async def _stream(self, request: web.Request, rec: RecordedRequest, entry: Reply | StreamError,
                      msg_id: str, model: str, in_tokens: int, out_tokens: int) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache",
                                           "request-id": _new_id("req_")})
        await resp.prepare(request)
        self._set_status(rec, 200)
        delay = entry.delay
        sent_delta = False

        async def send(event: str, data: dict[str, Any]) -> None:
            await resp.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())

        async def delta(index: int, d: dict[str, Any]) -> bool:
            nonlocal sent_delta
            if sent_delta and delay and not await self._sleep(delay):
                return False
            sent_delta = True
            await send("content_block_delta", {"type": "content_block_delta", "index": index,
                                               "delta": d})
            return True

        try:
            await send("message_start", {"type": "message_start", "message": {
                "id": msg_id, "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": in_tokens, "output_tokens": 1,
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}})

            if isinstance(entry, StreamError):
                blocks = [Block("text", text=entry.after_text)] if entry.after_text else []
            else:
                blocks = entry.blocks
            pinged = False
            for i, block in enumerate(blocks):
                start = ({"type": "text", "text": ""} if block.type == "text" else
                         {"type": "tool_use", "id": block.id, "name": block.name, "input": {}})
                await send("content_block_start", {"type": "content_block_start", "index": i,
                                                   "content_block": start})
                if not pinged:
                    await send("ping", {"type": "ping"})
                    pinged = True
                size = max(1, entry.chunk_size)
                if block.type == "text":
                    for piece in _pieces(block.text, size):
                        if not await delta(i, {"type": "text_delta", "text": piece}):
                            return resp
                else:
                    if not await delta(i, {"type": "input_json_delta", "partial_json": ""}):
                        return resp
                    for piece in _pieces(json.dumps(block.input), size):
                        if not await delta(i, {"type": "input_json_delta", "partial_json": piece}):
                            return resp
                await send("content_block_stop", {"type": "content_block_stop", "index": i})

            if isinstance(entry, StreamError):
                await send("error", {"type": "error",
                                     "error": {"type": entry.type, "message": entry.message}})
                await resp.write_eof()
                return resp
            if not pinged:
                await send("ping", {"type": "ping"})
            await send("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": entry.stop_reason,
                                                   "stop_sequence": entry.stop_sequence},
                                         "usage": {"output_tokens": out_tokens}})
            await send("message_stop", {"type": "message_stop"})
            await resp.write_eof()
        except ConnectionError:
            pass  # the client went away (abort / timeout)
        return resp


def _pieces(s: str, size: int) -> list[str]:
    return [s[i:i + size] for i in range(0, len(s), size)]
