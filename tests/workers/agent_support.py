"""Helpers for agent-run tests: the real opencode binary against the scripted local model."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bot.config import Settings
from bot.engine import Engine
from bot.types import Message
from tests.fakes.openai_fixtures import opencode_available
from tests.fakes.openai_server import FakeOpenAIServer
from tests.support.engines import REPO, WHERE, make_settings

requires_opencode = pytest.mark.skipif(
    not opencode_available(), reason="the pinned opencode binary is missing: run `npm install` in the checkout"
)


def agent_settings(tmp_path: Path, model: FakeOpenAIServer, manifest_extra: str = "", **env: str) -> Settings:
    """Settings whose opencode uses the scripted model, with a manifest tweak if given."""
    config = tmp_path / "opencode.json"
    model.write_opencode_config(config)
    manifest = tmp_path / "manifest.yml"
    # The cold agent unless the test asks for the warm one (tests/support/engines.TEST_DEFAULTS).
    manifest.write_text((REPO / "manifest.yml").read_text().replace("\nagent:\n", "\nagent:\n  mode: cold\n", 1)
                        + manifest_extra)
    base = {"BOT_MANIFEST": str(manifest), "OPENCODE_CONFIG": str(config), "PATH": os.environ.get("PATH", "")}
    return make_settings(tmp_path, **{**base, **env})


def warm_settings(tmp_path: Path, model: FakeOpenAIServer, **env: str) -> Settings:
    """`agent_settings` with the warm agent (`agent.mode: warm`: an opencode server per process)."""
    settings = agent_settings(tmp_path, model, **env)
    manifest = Path(settings.manifest_path)
    manifest.write_text(manifest.read_text().replace("  mode: cold\n", "  mode: warm\n", 1))
    return settings


def ask(engine: Engine, text: str, user: str = "U1", name: str = "ana") -> int:
    """Dispatch a message in the test thread; return its stored id."""
    return engine.dispatch(Message(where=WHERE, text=text, user_id=user, user_name=name)).message_id


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> object:
    """Wait for a condition a person would wait for; fail with what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def processes_with(fragment: str, *, starting: bool = False) -> list[int]:
    """Return the pids whose command line contains (or, with `starting`, starts with) `fragment`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmdline.startswith(fragment) if starting else fragment in cmdline:
                found.append(int(entry.name))
    return found

