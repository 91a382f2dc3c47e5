"""Resources: bytes kept once, read back, searched per channel (on SQLite and on PostgreSQL)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from bot.db import Database, head_revision
from bot.db.blobs import INLINE_TEXT_LIMIT
from bot.db.models import Base, ResourceContentRow, ResourceShareRow
from bot.db.repositories import Conversations, Resources
from bot.errors import ResourceGone, UserFacingError
from bot.types import ThreadRef

HERE = ThreadRef("slack", "C042", "1700000000.000100")
ELSEWHERE = ThreadRef("slack", "C999", "1700000000.000200")
#: A PNG signature and a few bytes that are not UTF-8: binary content.
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
PARSER = b"""import json


def parse_config(path):
    \"\"\"Read the retry budget from the settings file.\"\"\"
    with open(path) as handle:
        return json.load(handle)["retries"]
"""


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    assert database.migrate() == head_revision()
    yield database
    database.close()


@pytest.fixture
def blob_dir(tmp_path: Path) -> Path:
    return tmp_path / "data" / "blobs"


def conversation_id(db: Database, where: ThreadRef = HERE) -> int:
    with db.session() as s:
        return Conversations(s).ensure(where).id


def blob_files(blob_dir: Path) -> list[Path]:
    return [path for path in blob_dir.rglob("*") if path.is_file()] if blob_dir.exists() else []


def test_small_text_lives_in_the_database_and_large_or_binary_content_in_blobs(db: Database, blob_dir: Path) -> None:
    conversation = conversation_id(db)
    large = ("a long log line about the retry budget\n" * 3000).encode()
    assert len(large) > INLINE_TEXT_LIMIT
    with db.session() as s:
        resources = Resources(s, blob_dir)
        notes = resources.add(conversation, "docs/notes.md", b"# Notes\nretry twice\n", requested_by="ana", run_id=None)
        image = resources.add(conversation, "out/chart.png", PNG, kind="image")
        log = resources.add(conversation, "run.log", large, kind="log")
        makefile = resources.add(conversation, "Makefile", b"all:\n\tpytest\n")
    assert (notes.media_type, image.media_type, makefile.media_type) == ("text/markdown", "image/png", "text/plain")
    assert notes.short_id == f"r{notes.id}" and notes.requested_by == "ana"
    assert (notes.platform, notes.channel, notes.thread) == (HERE.platform, HERE.channel, HERE.thread)
    assert notes.sha256 == hashlib.sha256(b"# Notes\nretry twice\n").hexdigest() and notes.size == 20
    assert sorted(path.name for path in blob_files(blob_dir)) == sorted([image.sha256, log.sha256])
    assert (blob_dir / log.sha256[:2] / log.sha256).read_bytes() == large
    with db.reading() as s:
        resources = Resources(s, blob_dir)
        assert resources.content(notes) == b"# Notes\nretry twice\n"
        assert resources.content(image) == PNG
        assert resources.content(log) == large
        assert s.get(ResourceContentRow, notes.sha256).text == "# Notes\nretry twice\n"
        assert s.get(ResourceContentRow, image.sha256).in_blob and s.get(ResourceContentRow, image.sha256).text is None


def test_identical_content_is_kept_once(db: Database, blob_dir: Path) -> None:
    here, there = conversation_id(db), conversation_id(db, ELSEWHERE)
    big = bytes(range(256)) * 1024
    with db.session() as s:
        resources = Resources(s, blob_dir)
        first = resources.add(here, "a.bin", big)
        resources.add(there, "b.bin", big)
        resources.add(here, "x.txt", b"same text")
        resources.add(there, "y.txt", b"same text")
    with db.session() as s:
        Resources(s, blob_dir).add(here, "again.bin", big)
    with db.reading() as s:
        assert s.scalar(select(func.count()).select_from(ResourceContentRow)) == 2
        assert len(Resources(s).in_channel(HERE.platform, HERE.channel)) == 3
    assert [path.name for path in blob_files(blob_dir)] == [first.sha256]


def test_find_ranks_the_resource_holding_the_word_first_with_a_snippet(db: Database, blob_dir: Path) -> None:
    conversation = conversation_id(db)
    with db.session() as s:
        resources = Resources(s, blob_dir)
        resources.add(conversation, "README.md", b"# Project\nHow to install and run the tests.\n")
        config = resources.add(conversation, "src/config.py", PARSER)
        resources.add(conversation, "notes.txt", b"budget meeting moved to friday\n")
    with db.reading() as s:
        hits = Resources(s, blob_dir).find(HERE.platform, HERE.channel, "retry budget")
        assert hits[0].resource.id == config.id
        assert "retry budget" in hits[0].snippet and len(hits[0].snippet) <= 200
        assert hits[0].score > 0
        stemmed = Resources(s, blob_dir).find(HERE.platform, HERE.channel, "retries")
        assert [hit.resource.path for hit in stemmed][:1] == ["src/config.py"]
        prefix = Resources(s, blob_dir).find(HERE.platform, HERE.channel, "parse_conf")
        assert [hit.resource.path for hit in prefix] == ["src/config.py"]
        assert Resources(s, blob_dir).find(HERE.platform, HERE.channel, "kubernetes") == []
        assert Resources(s, blob_dir).find(HERE.platform, HERE.channel, "the of") == []  # stop words only


def test_find_by_a_word_of_the_file_name_and_in_large_text(db: Database, blob_dir: Path) -> None:
    conversation = conversation_id(db)
    with db.session() as s:
        resources = Resources(s, blob_dir)
        resources.add(conversation, "reports/quarterlyForecast.csv", b"q,value\n1,2\n")
        resources.add(conversation, "other.txt", b"nothing to see\n")
        resources.add(conversation, "big.log", b"filler line\n" * 8000 + b"the flaky teardown finally passed\n")
        resources.add(conversation, "legacy.bin", None, size=10, sha256="ab" * 32)  # an old caller: no bytes
        resources.add(conversation, "client.ts", b"export const retryTimeoutMs = 30_000;\n")
    with db.reading() as s:
        hits = Resources(s, blob_dir).find(HERE.platform, HERE.channel, "forecast")
        assert [hit.resource.path for hit in hits] == ["reports/quarterlyForecast.csv"]
        assert hits[0].snippet == "reports/quarterlyForecast.csv"  # no word in the text: the path
        hits = Resources(s, blob_dir).find(HERE.platform, HERE.channel, "teardown")
        assert [hit.resource.path for hit in hits] == ["big.log"] and "flaky teardown" in hits[0].snippet
        assert [hit.resource.path for hit in Resources(s).find(HERE.platform, HERE.channel, "legacy")] == ["legacy.bin"]
        hits = Resources(s).find(HERE.platform, HERE.channel, "timeout")  # a camelCase hump starts a word
        assert [hit.resource.path for hit in hits] == ["client.ts"] and "retryTimeoutMs" in hits[0].snippet
        assert [hit.resource.path for hit in Resources(s).find(HERE.platform, HERE.channel, "retryTimeout")] == [
            "client.ts"]


@pytest.mark.parametrize("query", ['"unbalanced', "retry*", "-budget", "NEAR(retry budget)", "(retry OR", "a:b",
                                   "col : retry", "^start", "retry AND", "NOT", "{name body}", "'; drop table x",
                                   "!!! ???", "", "  ", "über-cöde", "retry & budget | x:*", "\\\\", "%_"])
def test_search_syntax_in_a_query_never_breaks_it(db: Database, blob_dir: Path, query: str) -> None:
    conversation = conversation_id(db)
    with db.session() as s:
        Resources(s, blob_dir).add(conversation, "src/config.py", PARSER)
    with db.reading() as s:
        hits = Resources(s, blob_dir).find(HERE.platform, HERE.channel, query)
    if "retry" in query:
        assert [hit.resource.path for hit in hits] == ["src/config.py"]


def test_a_channel_never_finds_another_channels_resources(db: Database, blob_dir: Path) -> None:
    here, there = conversation_id(db), conversation_id(db, ELSEWHERE)
    other_thread = conversation_id(db, ThreadRef(HERE.platform, HERE.channel, "1700000000.000300"))
    discord = conversation_id(db, ThreadRef("discord", HERE.channel, HERE.thread))
    with db.session() as s:
        resources = Resources(s, blob_dir)
        mine = resources.add(here, "deploy.sh", b"kubectl rollout restart\n")
        sibling = resources.add(other_thread, "deploy-notes.md", b"rollout went fine\n")
        resources.add(there, "deploy.sh", b"kubectl rollout restart\n")
        resources.add(discord, "deploy.sh", b"kubectl rollout restart\n")
    with db.reading() as s:
        resources = Resources(s, blob_dir)
        assert {hit.resource.id for hit in resources.find(HERE.platform, HERE.channel, "rollout")} == {mine.id, sibling.id}
        assert [r.id for r in resources.in_channel(HERE.platform, HERE.channel)] == [sibling.id, mine.id]
        assert [r.id for r in resources.in_conversation(here)] == [mine.id]
        assert resources.by_path(HERE.platform, HERE.channel, "deploy.sh").id == mine.id
        assert resources.by_path("slack", "C404", "deploy.sh") is None


def test_by_path_finds_the_newest_by_path_or_file_name(db: Database, blob_dir: Path) -> None:
    conversation = conversation_id(db)
    with db.session() as s:
        resources = Resources(s, blob_dir)
        resources.add(conversation, "docs/report.md", b"v1")
        newest = resources.add(conversation, "docs/report.md", b"v2")
        other = resources.add(conversation, "src/report.py", b"print()")
    with db.session() as s:
        resources = Resources(s, blob_dir)
        assert resources.by_path(HERE.platform, HERE.channel, "docs/report.md").id == newest.id
        assert resources.by_path(HERE.platform, HERE.channel, "./docs/report.md").id == newest.id
        assert resources.by_path(HERE.platform, HERE.channel, "report.md").id == newest.id
        assert resources.by_path(HERE.platform, HERE.channel, "report.py").id == other.id
        assert resources.by_path(HERE.platform, HERE.channel, "report") is None
        assert resources.content(resources.by_path(HERE.platform, HERE.channel, "report.md")) == b"v2"
        resources.set_platform_file(newest.id, "F123", "https://example.slack.com/files/F123")
    with db.reading() as s:
        stored = Resources(s).get(newest.id)
        assert (stored.platform_file_id, stored.permalink) == ("F123", "https://example.slack.com/files/F123")
        assert Resources(s).get(10**6) is None


def test_content_whose_blob_was_deleted_raises_resource_gone(db: Database, blob_dir: Path) -> None:
    conversation = conversation_id(db)
    with db.session() as s:
        image = Resources(s, blob_dir).add(conversation, "chart.png", PNG)
        legacy = Resources(s, blob_dir).add(conversation, "old.txt", size=3, sha256="cd" * 32)
    (blob_dir / image.sha256[:2] / image.sha256).unlink()
    with db.reading() as s:
        with pytest.raises(ResourceGone) as gone:
            Resources(s, blob_dir).content(image)
        assert isinstance(gone.value, UserFacingError) and "chart.png" in str(gone.value)
        with pytest.raises(ResourceGone):
            Resources(s, blob_dir).content(legacy)
    with db.session() as s:  # the same bytes added again bring the blob back
        again = Resources(s, blob_dir).add(conversation, "chart-again.png", PNG)
    with db.reading() as s:
        assert Resources(s, blob_dir).content(image) == PNG == Resources(s, blob_dir).content(again)


def test_record_share_stores_where_and_by_whom(db: Database, blob_dir: Path) -> None:
    conversation = conversation_id(db)
    with db.session() as s:
        notes = Resources(s, blob_dir).add(conversation, "notes.md", b"hello")
        Resources(s, blob_dir).record_share(notes.id, platform="slack", channel="C777", thread=None, shared_by="U1",
                                            platform_message_id="1700.1")
    with db.reading() as s:
        shares = s.scalars(select(ResourceShareRow)).all()
        assert [(r.resource_id, r.channel, r.thread, r.shared_by, r.platform_message_id) for r in shares] == [
            (notes.id, "C777", None, "U1", "1700.1")]


def test_a_database_at_0002_with_resources_upgrades_and_finds_them_by_path(database_url: str, blob_dir: Path) -> None:
    from alembic import command
    from alembic.config import Config

    from bot.db import MIGRATIONS_DIR

    db = Database(database_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0002")
    with db.engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO conversations (id, platform, channel, thread, title, created_at, updated_at)"
            " VALUES (1, 'slack', 'C042', 't1', '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        connection.execute(text(
            "INSERT INTO resources (id, conversation_id, path, kind, size, sha256, platform_file_id, created_at)"
            " VALUES (7, 1, 'src/legacy_loader.py', 'file', 120, :sha, 'F9', CURRENT_TIMESTAMP)"), {"sha": "ef" * 32})
    try:
        assert db.migrate() == head_revision()
        with db.session() as s:
            resources = Resources(s, blob_dir)
            hits = resources.find("slack", "C042", "legacy loader")
            assert [(hit.resource.id, hit.resource.platform_file_id, hit.resource.size) for hit in hits] == [(7, "F9", 120)]
            assert resources.by_path("slack", "C042", "legacy_loader.py").id == 7
            with pytest.raises(ResourceGone):
                resources.content(hits[0].resource)
            added = resources.add(1, "src/new_loader.py", b"def load(): ...\n")
            assert {hit.resource.id for hit in resources.find("slack", "C042", "loader")} == {added.id, 7}
    finally:
        db.close()


def test_the_models_match_the_migrated_schema(db: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    def include_name(name: str | None, type_: str, parent_names: dict) -> bool:
        # The search index is made by the migration and never mapped: SQLite's FTS5 table (and
        # its shadow tables), PostgreSQL's tsvector column and its GIN index.
        if type_ == "table":
            return not (name or "").startswith(("resources_fts", "memories_fts"))
        if type_ == "column" and parent_names.get("table_name") in ("resources", "memories"):
            return name != "search"
        if type_ == "index":
            return name not in ("ix_resources_search", "ix_memories_search")
        return True

    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"include_name": include_name, "compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
