"""A run's artifacts reach its thread: each is redacted, stored as a resource, then uploaded.

    files the run changed ─► the first `resources.max_uploads` one by one, the rest in one zip
    the run's diff        ─► run-N.diff
    a failed run's log    ─► run-N-log.md
    a long answer         ─► run-N-answer.md

Everything is stored before it is uploaded, so a refused or failed upload loses nothing: the
bytes stay behind `Resources` and `/show` or `/share` can reach them later. A file over the
platform's upload limit is sent compressed when that fits, or named in a notice; files the
workspace must not give away (symlinks, FIFOs...) are named with the reason.
"""

from __future__ import annotations

import io
import logging
import mimetypes
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from bot.db.repositories import Resources
from bot.engine import Engine
from bot.types import AgentRun, Attachment, Conversation, Resource
from workers.workspace import RunChanges

log = logging.getLogger(__name__)

#: The zip that carries a run's files beyond `resources.max_uploads`.
MORE_FILES_ZIP = "run-{run_id}-more-files.zip"


@dataclass
class Captured:
    """What a run's capture did: how many files went up, and what the thread must be told."""

    uploaded: int = 0
    notices: list[str] = field(default_factory=list)


def capture_changes(engine: Engine, run: AgentRun, conversation: Conversation, changes: RunChanges) -> Captured:
    """Store and upload what a run changed (files, diff); return what the thread must be told."""
    captured = Captured()
    limit = engine.manifest.resources.max_uploads
    for file in changes.files[:limit]:
        if publish(engine, run, conversation, file.path, file.data, kind=_kind_of(file.path),
                   comment=f"Run {run.id}: {file.path}", captured=captured):
            captured.uploaded += 1
    rest = changes.files[limit:]
    if rest:
        for file in rest:  # each stays a resource of its own, found and shown like the others
            store(engine, run, conversation, file.path, file.data, kind=_kind_of(file.path))
        name = MORE_FILES_ZIP.format(run_id=run.id)
        archive = _zip({file.path: engine.redact.bytes(file.data) for file in rest})
        if _upload(engine, conversation, Attachment(name, archive, title=name,
                                                    comment=f"Run {run.id}: {len(rest)} more files"), captured):
            captured.uploaded += 1
    if changes.diff.strip():
        publish(engine, run, conversation, f"run-{run.id}.diff", changes.diff.encode("utf-8"), kind="diff",
                comment=f"Run {run.id}: its changes as a diff", captured=captured)
    captured.notices += [f"`{refused.path}`: {refused.reason}, not uploaded" for refused in changes.refused]
    return captured


#: The kind of resource of a run's whole answer, attached when it is too long for a reply.
ANSWER = "answer"


def answer_file(run_id: int) -> str:
    """Return the name of a run's whole answer, attached when it is too long for a reply."""
    return f"run-{run_id}-answer.md"


def publish(engine: Engine, run: AgentRun | None, conversation: Conversation, path: str, data: bytes, *,
            kind: str, comment: str = "", captured: Captured | None = None) -> bool:
    """Store one artifact as a resource and upload it into the thread; return whether it went up."""
    resource = store(engine, run, conversation, path, data, kind=kind)
    return upload(engine, conversation, resource, data, comment=comment, captured=captured)


def upload(engine: Engine, conversation: Conversation, resource: Resource, data: bytes, *, comment: str = "",
           captured: Captured | None = None) -> bool:
    """Upload a stored resource's bytes into the thread and record the platform's id; return whether it went up."""
    clean = engine.redact.bytes(data)
    attachment = Attachment(Path(resource.path).name, clean, title=resource.path, comment=comment)
    file_id = _upload(engine, conversation, attachment, captured if captured is not None else Captured())
    if file_id is None:
        return False
    with engine.db.session() as session:
        Resources(session, engine.settings.data_dir / "blobs").set_platform_file(
            resource.id, file_id, engine.file_link(conversation, file_id))
    return True


def store(engine: Engine, run: AgentRun | None, conversation: Conversation, path: str, data: bytes, *,
          kind: str) -> Resource:
    """Store an artifact's redacted bytes as a resource of the conversation; return it."""
    with engine.db.session() as session:
        return Resources(session, engine.settings.data_dir / "blobs").add(
            conversation.id, path, engine.redact.bytes(data), kind=kind, run_id=run.id if run else None,
            requested_by=run.requested_by if run else "")


def _upload(engine: Engine, conversation: Conversation, attachment: Attachment, captured: Captured) -> str | None:
    """Upload within the platform's limit (compressed if that fits); return the file id, or None."""
    limit = engine.upload_limit(conversation)
    if len(attachment.data) > limit:
        packed = _zip({attachment.filename: attachment.data})
        if len(packed) > limit:
            captured.notices.append(f"`{attachment.title or attachment.filename}`: {_size(len(attachment.data))}, over "
                                    f"this platform's {_size(limit)} upload limit even compressed; not uploaded "
                                    "(`/show` and `/share` still reach it)")
            return None
        attachment = Attachment(f"{attachment.filename}.zip", packed, title=attachment.title,
                                comment=f"{attachment.comment} (compressed: {_size(len(attachment.data))} is over "
                                        f"this platform's {_size(limit)} limit)".strip())
    try:
        return engine.upload(conversation, attachment)
    except Exception:  # boundary: one upload; the resource is stored and stays reachable
        log.exception("uploading %s failed", attachment.filename)
        captured.notices.append(f"`{attachment.title or attachment.filename}`: the upload failed; it is stored "
                                "(`/show` and `/share` still reach it)")
        return None


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _kind_of(path: str) -> str:
    media_type = mimetypes.guess_type(path)[0] or ""
    return "image" if media_type.startswith("image/") else "file"


def _size(size: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return f"{size} bytes"
