"""A toy chat platform in one module: its descriptor, settings, adapter, worker port and manifest printer.

Loaded as a plugin (`plugins.modules: [tests.adapters.toy_platform]`), it shows what adding a
platform takes. Its "network" is a JSON-lines file, `$TOY_OUTBOX`: every post, edit and upload
lands there, so a test (or a person) can read what the bot said. `serve` asks the bot one
question (the manifest's `platforms.toy.first_message`) and returns once it is answered.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from bot.hookspecs import hookimpl
from bot.platforms import Platform
from bot.types import Attachment, Message, Reply, ThreadRef

log = logging.getLogger(__name__)

#: The toy's channel and thread: it has just the one.
CHANNEL, THREAD = "lobby", "t1"


class ToySettings(BaseModel):
    """`platforms.toy` in manifest.yml."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    #: What `serve` says to the bot once it is up.
    first_message: str = "help"


class ToyPort:
    """A `ChatPort` that appends every post, edit and upload to the outbox file."""

    platform = "toy"

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox
        self.sent = 0

    def _write(self, **record: Any) -> str:
        self.sent += 1
        with self.outbox.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"id": str(self.sent), **record}) + "\n")
        return str(self.sent)

    def post(self, where: ThreadRef, reply: Reply) -> str:
        """Append the post; return its number."""
        return self._write(kind="post", thread=where.thread, text=reply.text)

    def edit(self, where: ThreadRef, message_id: str, reply: Reply) -> None:
        """Append the edit."""
        self._write(kind="edit", thread=where.thread, message=message_id, text=reply.text)

    def upload(self, where: ThreadRef, attachment: Attachment) -> str:
        """Append the upload's file name; return its number."""
        return self._write(kind="upload", thread=where.thread, filename=attachment.filename)


def port(engine: Any) -> ToyPort | None:
    """Return a port writing to $TOY_OUTBOX for a worker, or None without TOY_TOKEN."""
    if not engine.settings.get("TOY_TOKEN"):
        return None
    return ToyPort(Path(engine.settings.get("TOY_OUTBOX") or "toy-outbox.jsonl"))


def serve(engine: Any) -> None:
    """Attach the live port, say `first_message` to the bot as "ada", and return once it answered."""
    live = port(engine)
    assert live is not None  # `run` starts the toy only with TOY_TOKEN
    engine.attach_port(live)
    log.warning("toy: connected with token %s", engine.settings.get("TOY_TOKEN"))  # shows redaction
    section = engine.manifest.platforms.toy
    engine.receive(Message(where=ThreadRef("toy", CHANNEL, THREAD), text=section.first_message, user_id="u1",
                           user_name="ada", external_id="m1"))


def render_manifest(manifest: Any, settings: Any) -> str:
    """Return what `python -m bot manifest toy` prints: the bot's name and the first message."""
    return f"{manifest.name} on Toy; first message: {manifest.platforms.toy.first_message}"


TOY = Platform(
    name="toy",
    settings=ToySettings,
    required_env=("TOY_TOKEN",),
    secret_env=("TOY_TOKEN",),
    env_prefix="TOY_",
    serve="tests.adapters.toy_platform.serve",
    port="tests.adapters.toy_platform.port",
    manifest="tests.adapters.toy_platform.render_manifest",
    setup_hint="export TOY_TOKEN (any value of 6 characters or more)",
)


@hookimpl
def register_platforms() -> list[Platform]:
    """Return the toy's descriptor."""
    return [TOY]
