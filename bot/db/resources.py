"""The `Resources` repository: what runs made, their bytes (database or blob store), search, shares."""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath

from sqlalchemy import Select, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from bot.db import search
from bot.db.blobs import INLINE_TEXT_LIMIT, BlobStore, as_text, guess_media_type, text_prefix
from bot.db.models import ConversationRow, ResourceContentRow, ResourceRow, ResourceShareRow
from bot.errors import ResourceGone
from bot.types import Resource, SearchHit, utcnow

#: Statements `Resources.add` runs for every file, built once: Core, not ORM units of work
#: (a run adds dozens of files, an import thousands; bench/resources.py measures the rate).
_INSERT_RESOURCE = ResourceRow.__table__.insert().returning(ResourceRow.__table__.c.id)
_KEEP_CONTENT = {  # identical bytes kept by another resource (or another writer) stay as they are
    "postgresql": postgresql_insert(ResourceContentRow.__table__).on_conflict_do_nothing(index_elements=["sha256"]),
    "sqlite": sqlite_insert(ResourceContentRow.__table__).on_conflict_do_nothing(index_elements=["sha256"]),
}


def _resource(row: ResourceRow, conversation: ConversationRow) -> Resource:
    return Resource(id=row.id, conversation_id=row.conversation_id, path=row.path, size=row.size, sha256=row.sha256,
                    run_id=row.run_id, kind=row.kind, platform_file_id=row.platform_file_id,
                    created_at=row.created_at, media_type=row.media_type, platform=conversation.platform,
                    channel=conversation.channel, thread=conversation.thread, requested_by=row.requested_by,
                    permalink=row.permalink)


class Resources:
    """Files, diffs, logs, images and answers agents made: their bytes, search index and shares.

    Bytes are kept once per sha256: UTF-8 text of at most `INLINE_TEXT_LIMIT` bytes in the
    database, the rest in the blob store under `blob_dir` ($BOT_DATA_DIR/blobs). A blob is
    written before its row, so a rolled-back transaction leaves at most an unreferenced blob.
    """

    def __init__(self, session: Session, blob_dir: Path | None = None) -> None:
        self.s = session
        self.blobs = BlobStore(blob_dir) if blob_dir is not None else None
        self._places: dict[int, tuple[str, str, str]] = {}

    def add(self, conversation_id: int, path: str, data: bytes | None = None, *, kind: str = "file",
            run_id: int | None = None, requested_by: str = "", media_type: str | None = None,
            platform_file_id: str | None = None, permalink: str | None = None,
            size: int | None = None, sha256: str | None = None) -> Resource:
        """Keep one resource's bytes (already redacted), index its name and text; return it.

        `size` and `sha256` describe resources added without `data` (only indexed, by path);
        with `data` both are computed from it.
        """
        body = None
        content_sha256 = None
        if data is not None:
            sha256, size = hashlib.sha256(data).hexdigest(), len(data)
            body = as_text(data)
            media_type = media_type or guess_media_type(path, body is not None)
            self._keep(sha256, data, body, media_type)
            content_sha256 = sha256
        platform, channel, thread = self._place(conversation_id)
        values = dict(conversation_id=conversation_id, run_id=run_id, path=path, kind=kind, size=size or 0,
                      sha256=sha256 or "", platform_file_id=platform_file_id, created_at=utcnow(),
                      media_type=media_type or guess_media_type(path, False), requested_by=requested_by,
                      permalink=permalink)
        resource_id = self.s.execute(_INSERT_RESOURCE, {
            **values, "name": PurePosixPath(path).name[:255], "content_sha256": content_sha256}).scalar_one()
        search.index_resource(self.s, resource_id, platform=platform, channel=channel, path=path, body=body)
        return Resource(id=resource_id, **values, platform=platform, channel=channel, thread=thread)

    def set_platform_file(self, resource_id: int, platform_file_id: str | None, permalink: str | None = None) -> None:
        """Record the platform's id of (and link to) the uploaded file."""
        self.s.execute(update(ResourceRow).where(ResourceRow.id == resource_id)
                       .values(platform_file_id=platform_file_id, permalink=permalink))

    def get(self, resource_id: int) -> Resource | None:
        """Return the resource with this id, or None."""
        found = self.s.execute(self._select().where(ResourceRow.id == resource_id)).one_or_none()
        return _resource(*found) if found else None

    def by_path(self, platform: str, channel: str, path: str) -> Resource | None:
        """Return the channel's newest resource with this path (or file name), or None."""
        path = path.strip().removeprefix("./")
        found = self.s.execute(
            self._in_channel(platform, channel).where(or_(ResourceRow.path == path, ResourceRow.name == path))
            .order_by(ResourceRow.id.desc()).limit(1)).one_or_none()
        return _resource(*found) if found else None

    def in_conversation(self, conversation_id: int, limit: int = 50) -> list[Resource]:
        """Return the conversation's resources, newest first."""
        rows = self.s.execute(self._select().where(ResourceRow.conversation_id == conversation_id)
                              .order_by(ResourceRow.id.desc()).limit(limit)).all()
        return [_resource(*found) for found in rows]

    def in_channel(self, platform: str, channel: str, limit: int = 50) -> list[Resource]:
        """Return the channel's resources from all its threads, newest first."""
        rows = self.s.execute(self._in_channel(platform, channel).order_by(ResourceRow.id.desc()).limit(limit)).all()
        return [_resource(*found) for found in rows]

    def find(self, platform: str, channel: str, query: str, limit: int = 10) -> list[SearchHit]:
        """Return the channel's resources whose name or text match the query's words, best first.

        Every word must match, by its stem or (the last one) as a prefix; when no resource has
        them all, any word will do. Characters of the search syntax in the query are ignored.
        """
        words = search.query_words(query)
        ranked = search.find(self.s, platform=platform, channel=channel, words=words, limit=limit)
        if not ranked:
            return []
        rows = self.s.execute(
            self._select().add_columns(ResourceContentRow.text, ResourceContentRow.in_blob)
            .outerjoin(ResourceContentRow, ResourceContentRow.sha256 == ResourceRow.content_sha256)
            .where(ResourceRow.id.in_([resource_id for resource_id, _ in ranked]))).all()
        by_id = {row.id: (row, conversation, body, in_blob) for row, conversation, body, in_blob in rows}
        hits = []
        for resource_id, score in ranked:
            row, conversation, body, in_blob = by_id[resource_id]
            if in_blob and self.blobs is not None:
                body = text_prefix(self.blobs.get(row.content_sha256, limit=search.INDEX_TEXT_LIMIT) or b"")
            hits.append(SearchHit(_resource(row, conversation), search.snippet(body, words) or row.path, score))
        return hits

    def content(self, resource: Resource) -> bytes:
        """Return the resource's bytes; raise `ResourceGone` when they are no longer kept."""
        stored = self.s.scalars(
            select(ResourceContentRow).join(ResourceRow, ResourceRow.content_sha256 == ResourceContentRow.sha256)
            .where(ResourceRow.id == resource.id)).one_or_none()
        if stored is not None and not stored.in_blob and stored.text is not None:
            return stored.text.encode("utf-8")
        data = self.blobs.get(stored.sha256) if stored is not None and self.blobs is not None else None
        if data is None:
            raise ResourceGone(f"The contents of {resource.short_id} ({resource.path}) are no longer kept.")
        return data

    def record_share(self, resource_id: int, *, platform: str, channel: str, thread: str | None,
                     shared_by: str, platform_message_id: str | None) -> None:
        """Record that the resource was posted again, where and by whom."""
        self.s.add(ResourceShareRow(resource_id=resource_id, platform=platform, channel=channel, thread=thread,
                                    shared_by=shared_by, platform_message_id=platform_message_id))
        self.s.flush()

    def _keep(self, sha256: str, data: bytes, body: str | None, media_type: str) -> None:
        """Store the bytes once: inline when small text, else as a blob (rewritten if it was lost)."""
        inline = body is not None and len(data) <= INLINE_TEXT_LIMIT
        if not inline:
            if self.blobs is None:
                raise ValueError(f"Resources needs a blob_dir to keep {len(data):,} bytes of {media_type}")
            self.blobs.put(sha256, data)
        statement = _KEEP_CONTENT[self.s.get_bind().dialect.name]
        self.s.execute(statement, {"sha256": sha256, "size": len(data), "media_type": media_type,
                                   "text": body if inline else None, "in_blob": not inline, "created_at": utcnow()})

    def _place(self, conversation_id: int) -> tuple[str, str, str]:
        """Return the conversation's platform, channel and thread (asked once per repository)."""
        if conversation_id not in self._places:
            self._places[conversation_id] = tuple(self.s.execute(
                select(ConversationRow.platform, ConversationRow.channel, ConversationRow.thread)
                .where(ConversationRow.id == conversation_id)).one())
        return self._places[conversation_id]

    @staticmethod
    def _select() -> Select:
        return select(ResourceRow, ConversationRow).join(ConversationRow, ConversationRow.id == ResourceRow.conversation_id)

    def _in_channel(self, platform: str, channel: str) -> Select:
        return self._select().where(ConversationRow.platform == platform, ConversationRow.channel == channel)
