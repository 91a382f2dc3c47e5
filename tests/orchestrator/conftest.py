"""Engines wired to a local Anthropic Messages API (tests.fakes.anthropic_server) on 127.0.0.1."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.engine import Engine, set_current
from bot.queue import InProcessQueue
from bot.types import Attachment, Message, Reply, ThreadRef
from plugins.answer import claude
from tests.conftest import REPO, make_settings

WHERE = ThreadRef("test", "C1", "T1")


class RecordingPort:
    """A chat port keeping, in order, what a platform would have shown: posts, edits, files."""

    platform = "test"

    def __init__(self) -> None:
        self.events: list[tuple[str, str, Reply | Attachment]] = []

    def post(self, where: ThreadRef, reply: Reply) -> str:
        message_id = f"m{len(self.events) + 1}"
        self.events.append(("post", message_id, reply))
        return message_id

    def edit(self, where: ThreadRef, message_id: str, reply: Reply) -> None:
        self.events.append(("edit", message_id, reply))

    def upload(self, where: ThreadRef, attachment: Attachment) -> str:
        self.events.append(("upload", f"f{len(self.events) + 1}", attachment))
        return self.events[-1][1]

    def shown(self, message_id: str) -> list[Reply]:
        """Every version of one message, as posted and then edited."""
        return [item for kind, mid, item in self.events if mid == message_id and kind in ("post", "edit")]

    @property
    def final_texts(self) -> dict[str, str]:
        """The text each message ends with."""
        texts: dict[str, str] = {}
        for kind, message_id, item in self.events:
            if kind in ("post", "edit"):
                texts[message_id] = item.text
        return texts


def write_manifest(folder: Path, overrides: dict[str, dict[str, Any]]) -> Path:
    """Write the repo's manifest with some sections changed; return its path."""
    data = yaml.safe_load((REPO / "manifest.yml").read_text())
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    path = folder / "manifest.yml"
    path.write_text(yaml.safe_dump(data))
    return path


EngineFactory = Callable[..., tuple[Engine, RecordingPort]]


@pytest.fixture
def make_engine(tmp_path: Path, anthropic_server, monkeypatch: pytest.MonkeyPatch) -> Iterator[EngineFactory]:  # noqa: F811
    """Build an engine on SQLite, in-process jobs, whose environment points at the fake API.

    `key=False` leaves ANTHROPIC_API_KEY unset; `manifest={...}` overrides manifest sections;
    `env={...}` adds or replaces environment variables.
    Streamed answers are edited every 50 ms instead of every second, to keep the tests short.
    """
    monkeypatch.setattr(claude, "EDIT_INTERVAL_S", 0.05)
    built: list[Engine] = []

    def factory(*, key: bool = True, manifest: dict[str, dict[str, Any]] | None = None,
                env: dict[str, str] | None = None) -> tuple[Engine, RecordingPort]:
        env = {**(anthropic_server.env() if key else {}), **(env or {})}
        if manifest:
            env["BOT_MANIFEST"] = str(write_manifest(tmp_path, manifest))
        engine = Engine.from_settings(make_settings(tmp_path, **env), queue=InProcessQueue(), load_entrypoints=False)
        set_current(engine)
        port = RecordingPort()
        engine.attach_port(port)
        built.append(engine)
        return engine, port

    yield factory
    set_current(None)
    for engine in built:
        engine.close()


def message(text: str, user: str = "U1", where: ThreadRef = WHERE) -> Message:
    return Message(where=where, text=text, user_id=user, user_name="ana")


def dispatch_and_wait(engine: Engine, text: str, user: str = "U1", where: ThreadRef = WHERE):
    """Dispatch a message and wait for its job; return what dispatch did."""
    dispatched = engine.dispatch(message(text, user, where))
    if dispatched.job_id:
        assert engine.queue.wait([dispatched.job_id], 60), "the message's job did not finish"
    return dispatched


def rows(engine: Engine, sql: str, *args: Any) -> list[tuple]:
    """Run a read-only query on the engine's SQLite database."""
    path = engine.settings.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        return connection.execute(sql, args).fetchall()
