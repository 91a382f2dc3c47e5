"""The Codex CLI's `exec --json` event lines, parsed into typed `RunEvent`s.

One JSON object per line (PLATFORM_FACTS, measured on 0.169.0): `thread.started` (its
`thread_id` is the session a follow-up resumes), `turn.started`, `item.started|updated|completed`
(an `item` with a `type`: `command_execution`, `file_change`, `agent_message`, `reasoning`,
`mcp_tool_call`, `web_search`, `todo_list`, `error`), `turn.completed` (`usage`), `turn.failed`
(`error.message`) and a top-level `error` (`message`) just before a failed turn. Text arrives
whole in `agent_message`; there are no deltas.

An `item` of type `error` is a warning Codex goes on after (an ignored config key, a model it
has no metadata for): it is kept as a STEP, never as an ERROR that would fail the run.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from bot.types import EventKind, RunEvent
from plugins.agents.cli_runner import json_object

#: Characters of a command or path shown in a checklist line.
LABEL_CHARS = 80
#: Codex runs every command as `<shell> -lc <script>`; the script is what the model asked for.
SHELL_WRAPPER_FLAGS = ("-lc", "-c")
#: Checklist verbs for `file_change` kinds (codex's PatchChangeKind).
CHANGE_VERBS = {"add": "wrote", "update": "edited", "delete": "deleted"}


def parse_line(line: str) -> tuple[RunEvent | None, str | None]:
    """Return the event a line holds (None for noise) and the session (thread) id it names."""
    data = json_object(line)
    if data is None:
        return None, None
    session = data.get("thread_id") if data.get("type") == "thread.started" else None
    return to_event(data), session


def to_event(data: dict[str, Any]) -> RunEvent:
    """Return the typed event for one decoded Codex event."""
    kind = str(data.get("type") or "event")
    if kind == "item.completed":
        return _completed_item(data.get("item") or {}, data)
    if kind == "turn.completed":
        usage = data.get("usage") or {}
        return RunEvent(EventKind.TOKENS, name="turn.completed", tokens_in=int(usage.get("input_tokens") or 0),
                        tokens_out=int(usage.get("output_tokens") or 0) + int(usage.get("reasoning_output_tokens") or 0),
                        raw=data)
    if kind == "turn.failed":
        message = (data.get("error") or {}).get("message") or "the agent's turn failed"
        return RunEvent(EventKind.ERROR, name=kind, text=str(message), raw=data)
    if kind == "error":
        return RunEvent(EventKind.ERROR, name=kind, text=str(data.get("message") or "the agent reported an error"),
                        raw=data)
    item = data.get("item") or {}
    if kind == "item.started" and item.get("type") == "command_execution":
        return RunEvent(EventKind.STEP, name="command", text=f"running `{_short(command_of(item))}`",
                        status="running", raw=data)
    return RunEvent(EventKind.STEP, name=kind if not item else f"{kind}:{item.get('type', '')}", raw=data)


def _completed_item(item: dict[str, Any], data: dict[str, Any]) -> RunEvent:
    """Return the event for a finished item: a tool call, the agent's words, or a step."""
    kind = str(item.get("type") or "")
    if kind == "agent_message":
        return RunEvent(EventKind.TEXT, text=str(item.get("text") or ""), raw=data)
    if kind == "command_execution":
        code = item.get("exit_code")
        ok = item.get("status") == "completed" and code in (0, None)
        text = f"ran `{_short(command_of(item))}`" + ("" if ok else f" (exit {code})" if code is not None else "")
        return RunEvent(EventKind.TOOL, name="command", text=text, status="completed" if ok else "error", raw=data)
    if kind == "file_change":
        changes = [change for change in item.get("changes") or [] if isinstance(change, dict)]
        text = ", ".join(f"{CHANGE_VERBS.get(str(c.get('kind')), 'changed')} `{_short(Path(str(c.get('path'))).name)}`"
                         for c in changes) or "changed files"
        ok = item.get("status") == "completed"
        return RunEvent(EventKind.TOOL, name="file_change", text=text, status="completed" if ok else "error", raw=data)
    if kind == "mcp_tool_call":
        name = f"{item.get('server', 'mcp')}.{item.get('tool', 'tool')}"
        ok = item.get("status") == "completed"
        return RunEvent(EventKind.TOOL, name="mcp", text=f"called `{_short(name)}`",
                        status="completed" if ok else "error", raw=data)
    if kind == "web_search":
        return RunEvent(EventKind.TOOL, name="web_search", text=f"searched the web for `{_short(str(item.get('query', '')))}`",
                        status="completed", raw=data)
    if kind == "error":
        return RunEvent(EventKind.STEP, name="warning", text=str(item.get("message") or ""), raw=data)
    return RunEvent(EventKind.STEP, name=f"item.completed:{kind}", raw=data)


def command_of(item: dict[str, Any]) -> str:
    """Return the command an item ran as the model wrote it, without Codex's `bash -lc` wrapper."""
    command = str(item.get("command") or "")
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    if len(words) == 3 and words[1] in SHELL_WRAPPER_FLAGS:
        return words[2]
    return command


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"
