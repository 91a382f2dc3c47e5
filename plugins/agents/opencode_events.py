"""opencode's `run --format json` event lines, parsed into typed `RunEvent`s.

One JSON object per line: {type, timestamp, sessionID, part|error} (PLATFORM_FACTS, measured
on opencode 1.18.33). Unknown types are kept as STEP events so nothing is lost from the log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bot.approvals import ApprovalRequest, asked_event
from bot.runs import RUNNING_STEP
from bot.types import EventKind, RunEvent
from plugins.agents.cli_runner import json_object

#: Characters of a tool's command or path shown in a checklist line.
LABEL_CHARS = 80


def parse_line(line: str) -> tuple[RunEvent | None, str | None]:
    """Return the event a line holds (None for noise) and the session id it carries."""
    data = json_object(line)
    if data is None:
        return None, None
    return to_event(data), data.get("sessionID")


def to_event(data: dict[str, Any]) -> RunEvent:
    """Return the typed event for one decoded opencode event."""
    kind = data.get("type", "")
    part = data.get("part") or {}
    if kind == "tool_use":
        state = part.get("state") or {}
        tool = str(part.get("tool", "tool"))
        status = str(state.get("status", ""))
        text = tool_label(tool, state.get("input") or {}, state.get("title") or "")
        if status == "error" and state.get("error"):
            text += f" ({str(state['error']).splitlines()[0][:120]})"
        return RunEvent(EventKind.TOOL, name=tool, text=text, status=status, raw=data)
    if kind == "text":
        return RunEvent(EventKind.TEXT, text=str(part.get("text", "")), raw=data)
    if kind == "step_finish":
        tokens = part.get("tokens") or {}
        return RunEvent(
            EventKind.TOKENS,
            name=str(part.get("reason", "")),
            tokens_in=int(tokens.get("input") or 0),
            tokens_out=int(tokens.get("output") or 0) + int(tokens.get("reasoning") or 0),
            cost=float(part.get("cost") or 0.0),
            raw=data,
        )
    if kind == "error":
        error = data.get("error") or {}
        message = (error.get("data") or {}).get("message") or error.get("name") or "the agent reported an error"
        return RunEvent(EventKind.ERROR, name=str(error.get("name", "")), text=str(message), raw=data)
    return RunEvent(EventKind.STEP, name=str(kind or "event"), raw=data)


def tool_label(tool: str, arguments: dict[str, Any], title: str) -> str:
    """Return a short checklist line for a tool call: what file, what command."""
    if tool in ("write", "edit", "read") and arguments.get("filePath"):
        verb = {"write": "wrote", "edit": "edited", "read": "read"}[tool]
        return f"{verb} `{_short(Path(str(arguments['filePath'])).name)}`"
    if tool == "bash" and arguments.get("command"):
        return f"ran `{_short(str(arguments['command']))}`"
    return f"{tool} {_short(title)}".strip()


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


class ServerEvents:
    """Turns one session's `opencode serve` events into the same `RunEvent`s as `run`'s lines.

    The server wraps `run`'s parts in `message.part.updated` (PLATFORM_FACTS, opencode_probe.md):
    a part is sent again each time it changes, so a tool is reported once as it starts (a STEP
    named `tool-running`, shown as the step in progress) and once when it ends (a TOOL with its
    outcome), and a text part once, when complete. Only parts of the assistant's messages
    count: the user's prompt is a text part too. A `permission.asked` (a tool call matching
    an `ask` rule) becomes an approval request (`bot.approvals.ASKED`) with the command or
    the pending edit's diff.
    """

    def __init__(self, approval_timeout_s: float = 0.0) -> None:
        #: How long an approval request waits (shown in it; the run enforces it).
        self.approval_timeout_s = approval_timeout_s
        self.assistant_messages: set[str] = set()
        self.user_messages: set[str] = set()
        self._reported: set[tuple[str, str]] = set()
        #: True once the session has said it is idle (the run may be over: reconcile).
        self.idle = False

    def translate(self, payload: dict[str, Any]) -> list[RunEvent]:
        """Return the run events one server event holds (often none)."""
        kind = payload.get("type", "")
        properties = payload.get("properties") or {}
        if kind == "message.updated":
            info = properties.get("info") or {}
            role_set = self.assistant_messages if info.get("role") == "assistant" else self.user_messages
            role_set.add(str(info.get("id", "")))
            return []
        if kind == "session.idle" or (kind == "session.status" and (properties.get("status") or {}).get("type") == "idle"):
            self.idle = True
            return []
        if kind == "session.status":
            self.idle = False
            return []
        if kind == "session.error":
            error = properties.get("error") or {}
            return [to_event({"type": "error", "error": error})]
        if kind == "message.part.updated":
            return self._part(properties.get("part") or {})
        if kind == "permission.asked" and properties.get("id") and self._first(str(properties["id"]), "asked"):
            return [asked_event(self._request(properties))]
        return []

    def _request(self, asked: dict[str, Any]) -> ApprovalRequest:
        """Return the approval request a `permission.asked` event holds: the command, or the edit's diff."""
        metadata = asked.get("metadata") or {}
        tool = str(asked.get("permission", "tool"))
        detail = str(metadata.get("command") or metadata.get("diff") or "")
        target = str(metadata.get("filepath") or ", ".join(str(p) for p in asked.get("patterns") or []))
        if metadata.get("filepath"):
            target = Path(target).name
        return ApprovalRequest(str(asked["id"]), tool, detail, target, self.approval_timeout_s)

    def _part(self, part: dict[str, Any]) -> list[RunEvent]:
        part_type, part_id = part.get("type", ""), str(part.get("id", ""))
        if str(part.get("messageID", "")) in self.user_messages:
            return []
        raw = {"type": part_type, "sessionID": part.get("sessionID"), "part": part}
        if part_type == "tool":
            state = part.get("state") or {}
            status = str(state.get("status", ""))
            if status == "running" and self._first(part_id, "running"):
                label = tool_label(str(part.get("tool", "tool")), state.get("input") or {}, state.get("title") or "")
                return [RunEvent(EventKind.STEP, name=RUNNING_STEP, text=label, status="running", raw=raw)]
            if status in ("completed", "error") and self._first(part_id, "done"):
                return [to_event({**raw, "type": "tool_use"})]
            return []
        if part_type == "text" and (part.get("time") or {}).get("end") \
                and str(part.get("messageID", "")) in self.assistant_messages and self._first(part_id, "text"):
            return [to_event({**raw, "type": "text"})]
        if part_type == "step-finish" and self._first(part_id, "finish"):
            return [to_event({**raw, "type": "step_finish"})]
        if part_type == "step-start" and self._first(part_id, "start"):
            return [to_event({**raw, "type": "step_start"})]
        return []

    def _first(self, part_id: str, stage: str) -> bool:
        key = (part_id, stage)
        if key in self._reported:
            return False
        self._reported.add(key)
        return True
