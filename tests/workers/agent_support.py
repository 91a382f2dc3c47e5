"""Helpers for agent-run tests: the real opencode binary against the scripted local model."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bot.config import Settings
from bot.engine import Engine, set_current
from bot.types import Attachment, Message, Reply, ThreadRef
from tests.conftest import REPO
from tests.fakes.openai_fixtures import opencode_available
from tests.fakes.openai_server import FakeOpenAIServer

requires_opencode = pytest.mark.skipif(
    not opencode_available(), reason="the pinned opencode binary is missing: run `npm install` in the checkout"
)

WHERE = ThreadRef("test", "C1", "T1")


class ThreadView:
    """A chat port that records the thread as a person would see it: posts, edits, files."""

    platform = "test"

    def __init__(self) -> None:
        self.messages: dict[str, list[Reply]] = {}
        self.order: list[str] = []
        self.files: list[Attachment] = []

    def post(self, where: ThreadRef, reply: Reply) -> str:
        message_id = f"m{len(self.order) + 1}"
        self.order.append(message_id)
        self.messages[message_id] = [reply]
        return message_id

    def edit(self, where: ThreadRef, message_id: str, reply: Reply) -> None:
        self.messages[message_id].append(reply)

    def upload(self, where: ThreadRef, attachment: Attachment) -> str:
        self.files.append(attachment)
        return f"f{len(self.files)}"

    def texts(self, message_id: str) -> list[str]:
        return [reply.text for reply in self.messages[message_id]]

    def last(self, message_id: str) -> str:
        return self.messages[message_id][-1].text


def agent_settings(tmp_path: Path, model: FakeOpenAIServer, manifest_extra: str = "", **env: str) -> Settings:
    """Settings whose opencode uses the scripted model, with a manifest tweak if given."""
    config = tmp_path / "opencode.json"
    model.write_opencode_config(config)
    manifest = tmp_path / "manifest.yml"
    manifest.write_text((REPO / "manifest.yml").read_text() + manifest_extra)
    base = {"BOT_DATA_DIR": str(tmp_path / "data"), "BOT_MANIFEST": str(manifest), "OPENCODE_CONFIG": str(config),
            "PATH": os.environ.get("PATH", "")}
    return Settings.from_env({**base, **env})


def make_engine(settings: Settings, queue=None) -> tuple[Engine, ThreadView]:
    engine = Engine.from_settings(settings, queue=queue, load_entrypoints=False)
    set_current(engine)
    view = ThreadView()
    engine.attach_port(view)
    return engine, view


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


def closing(engine: Engine) -> Iterator[Engine]:
    try:
        yield engine
    finally:
        set_current(None)
        engine.close()
