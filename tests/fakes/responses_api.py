"""OpenAI's Responses API as the scripted fake speaks it: a `Turn` as stream events, and request readers.

The Codex CLI (0.169.0) speaks only this API: one streamed ``POST /v1/responses`` per model
step (PLATFORM_FACTS). Its body carries ``input``, a list of items (``message`` with a role and
``input_text``/``output_text`` parts, ``function_call``, ``function_call_output``, ...) and the
``tools`` it offers; the answer is server-sent events, each ``event: TYPE`` + ``data: {type, ...}``.
Events sent here, in order: ``response.created``; per output item ``response.output_item.added``,
text as ``response.output_text.delta`` pieces, then ``response.output_item.done`` (a ``message``
or a ``function_call`` with ``call_id``, ``name`` and ``arguments`` as a JSON string); then
``response.completed`` with ``usage``, or ``response.failed`` with an ``error`` instead.

A tool result comes back in the *next* request's ``input`` as a ``function_call_output`` item
whose ``output`` is text (Codex puts a ``Process exited with code N`` header before the output).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.fakes.openai_server import Turn

#: Characters per streamed text delta: small enough that text really arrives in pieces.
DELTA_CHARS = 24


def stream_events(turn: Turn, response_id: str, model: str, usage: dict[str, int]) -> list[dict[str, Any]]:
    """Return the stream events (dicts with a ``type``) that answer one request with `turn`."""
    response = {"id": response_id, "object": "response", "model": model, "status": "in_progress", "output": []}
    events: list[dict[str, Any]] = [{"type": "response.created", "response": response}]
    items: list[dict[str, Any]] = []
    if turn.content:
        item_id = f"msg_{response_id}"
        items.append({"type": "message", "id": item_id, "role": "assistant", "status": "completed",
                      "content": [{"type": "output_text", "text": turn.content, "annotations": []}]})
        events.append({"type": "response.output_item.added", "output_index": 0,
                       "item": {**items[-1], "status": "in_progress", "content": []}})
        for start in range(0, len(turn.content), DELTA_CHARS):
            events.append({"type": "response.output_text.delta", "item_id": item_id, "output_index": 0,
                           "content_index": 0, "delta": turn.content[start:start + DELTA_CHARS]})
        events.append({"type": "response.output_item.done", "output_index": 0, "item": items[-1]})
    for call in turn.tool_calls:
        index = len(items)
        items.append({"type": "function_call", "id": f"fc_{call.id}", "call_id": call.id, "name": call.name,
                      "arguments": json.dumps(call.arguments), "status": "completed"})
        events.append({"type": "response.output_item.added", "output_index": index,
                       "item": {**items[-1], "arguments": "", "status": "in_progress"}})
        events.append({"type": "response.output_item.done", "output_index": index, "item": items[-1]})
    if turn.stream_error:
        error = {"code": "server_error", "message": turn.stream_error}
        events.append({"type": "response.failed",
                       "response": {**response, "status": "failed", "error": error, "output": items}})
        return events
    done = {**response, "status": "completed", "output": items, "usage": {
        "input_tokens": usage["prompt_tokens"], "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage["total_tokens"]}}
    events.append({"type": "response.completed", "response": done})
    return events


def sse(event: dict[str, Any]) -> bytes:
    """Return one event as Server-Sent Events bytes (``event:`` line, ``data:`` line, blank line)."""
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def message_texts(body: dict[str, Any], role: str | None = None) -> list[str]:
    """Return the text of each ``message`` item of a request's input (of one role, if given)."""
    texts = []
    for item in body.get("input") or []:
        if isinstance(item, dict) and item.get("type", "message") == "message" and role in (None, item.get("role")):
            content = item.get("content")
            if isinstance(content, str):
                texts.append(content)
            else:
                texts.append("".join(part.get("text", "") for part in content or [] if isinstance(part, dict)))
    return texts


def function_outputs(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the ``function_call_output`` items of a request's input (the tool results sent back)."""
    return [item for item in body.get("input") or [] if isinstance(item, dict)
            and item.get("type") == "function_call_output"]


def function_calls(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the ``function_call`` items of a request's input (the model's earlier calls, replayed)."""
    return [item for item in body.get("input") or [] if isinstance(item, dict) and item.get("type") == "function_call"]


def tool_names(body: dict[str, Any]) -> set[str]:
    """Return the names of the tools a request offers the model."""
    return {tool.get("name") or (tool.get("function") or {}).get("name", "") for tool in body.get("tools") or []}
