"""opencode's `run --format json` event lines, parsed into typed `RunEvent`s.

One JSON object per line: {type, timestamp, sessionID, part|error} (PLATFORM_FACTS, measured
on opencode 1.18.33). Unknown types are kept as STEP events so nothing is lost from the log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
