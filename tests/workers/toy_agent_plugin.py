"""A toy agent plugin on the shared CLI runner, loaded like a third-party plugin.

A manifest selects it with `plugins.modules: [tests.workers.toy_agent_plugin]` and
`agent: {name: toy}`. It keeps only what is its agent's own: the command line and the parser
of its event lines; `plugins.agents.cli_runner` starts, isolates, watches and ends it.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from bot.hookspecs import hookimpl
from bot.types import AgentOutcome, AgentTask, EventKind, RunEvent
from plugins.agents.cli_runner import CliInvocation, run_cli

NAME = "toy"
SCRIPT = Path(__file__).with_name("toy_agent.py")
KINDS = {"tool": EventKind.TOOL, "text": EventKind.TEXT, "tokens": EventKind.TOKENS, "error": EventKind.ERROR}


def parse_line(line: str) -> tuple[RunEvent | None, str | None]:
    """Return the event a toy line holds (None for anything else) and its session id."""
    try:
        data = json.loads(line)
    except ValueError:
        return None, None
    kind = KINDS.get(data.get("type"))
    if kind is None:
        return None, data.get("session")
    event = RunEvent(kind, name=str(data.get("name", "")), text=str(data.get("text", "")),
                     status=str(data.get("status", "")), tokens_in=int(data.get("input", 0)),
                     tokens_out=int(data.get("output", 0)), raw=data)
    return event, data.get("session")


class ToyAgent:
    """The toy CLI agent (`bot.types.Agent`)."""

    name = NAME

    def run(self, task: AgentTask, on_event: Callable[[RunEvent], None], cancel: threading.Event) -> AgentOutcome:
        """Run the toy in the workspace; return how it ended."""
        argv = [sys.executable, str(SCRIPT), "--", task.prompt]
        return run_cli(CliInvocation(NAME, argv, parse_line, env={"TOY_AGENT": "1"}), task, on_event, cancel)


@hookimpl
def register_agents() -> list[ToyAgent]:
    return [ToyAgent()]
