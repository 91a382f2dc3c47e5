"""The content-addressed file store for resource bytes too large or too binary for the database.

Each blob is a file named by its sha256 under a two-character fan-out directory
(`blobs/ab/ab12...`), written to a temporary file in the same directory and renamed into
place, so a reader never sees half a blob and identical content is written once.
"""

from __future__ import annotations

import mimetypes
import os
import tempfile
from pathlib import Path

#: UTF-8 text up to this many bytes is kept in the database (`resource_contents.text`); larger
#: or binary content goes to the blob store. 64 KiB holds nearly every source file, diff and
#: answer an agent writes, and stays well below what a row should carry.
INLINE_TEXT_LIMIT = 64 * 1024
#: What an unknown file is called when its bytes are not text (RFC 2046's default).
BINARY_MEDIA_TYPE = "application/octet-stream"
#: What an unknown file is called when its bytes are UTF-8 text.
TEXT_MEDIA_TYPE = "text/plain"


class BlobStore:
    """Bytes kept as files named by their sha256 under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        """Return where the blob with this sha256 lives (whether or not it exists)."""
        return self.root / sha256[:2] / sha256

    def put(self, sha256: str, data: bytes) -> None:
        """Store the bytes under their sha256 unless they are there already; atomic."""
        target = self.path(sha256)
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def get(self, sha256: str, limit: int | None = None) -> bytes | None:
        """Return the blob's bytes (at most `limit` of them), or None when it is gone."""
        try:
            with self.path(sha256).open("rb") as handle:
                return handle.read() if limit is None else handle.read(limit)
        except FileNotFoundError:
            return None


def as_text(data: bytes) -> str | None:
    """Return the bytes decoded as UTF-8 text, or None when they are binary."""
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def guess_media_type(path: str, is_text: bool) -> str:
    """Return the media type for a path: from its extension, else text/plain for text, else binary."""
    guessed, _encoding = mimetypes.guess_type(path, strict=False)
    if guessed:
        return guessed
    return TEXT_MEDIA_TYPE if is_text else BINARY_MEDIA_TYPE


def text_prefix(data: bytes) -> str | None:
    """Return the leading part of a possibly cut-off UTF-8 text, or None when it is binary."""
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A read cut short may end inside a character (at most 3 bytes of it).
        if exc.reason == "unexpected end of data" and exc.start >= len(data) - 3:
            return data[: exc.start].decode("utf-8")
        return None
