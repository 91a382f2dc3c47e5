"""The database: connection, migrations and repositories.

SQLite by default (WAL, a busy timeout) in the data directory; PostgreSQL through DATABASE_URL.
Alembic migrations run on start and by `python -m bot migrate`. Alembic itself is imported only
when the stored revision is not the newest migration's, which one query tells: at most starts
the schema is current, and importing alembic would cost a quarter of a second.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Engine as SqlEngine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bot import constants
from bot.errors import DatabaseUnavailable
from bot.redaction import Redactor

log = logging.getLogger(__name__)
#: Execution option that marks a connection's transactions as read-only (see `reading`).
READ_ONLY = "threadwork_read_only"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: The table where alembic keeps the schema's revision (alembic's default `version_table`).
VERSION_TABLE = "alembic_version"
#: `revision = "..."` and `down_revision = ...` as alembic's script template writes them.
_REVISION_LINE = re.compile(r"""^(down_revision|revision)\s*(?::[^=]*)?=\s*(?:['"]([^'"]+)['"]|None)""", re.MULTILINE)


class Database:
    """One database: an SQLAlchemy engine, its sessions and its schema version."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _create_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._readers = sessionmaker(self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """Yield a session inside one transaction: committed on success, rolled back on error."""
        with _in_transaction(self._sessions) as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """Yield a session for reads only: on SQLite it never waits for the write lock."""
        with _in_transaction(self._readers) as session:
            yield session

    def migrate(self) -> str:
        """Apply every pending migration; return the schema revision now in force."""
        try:
            head = head_revision()
            if head is not None and self.revision() == head:
                return head
            from alembic import command
            from alembic.config import Config as AlembicConfig

            config = AlembicConfig()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            with self.engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
            with self.engine.connect() as connection:
                return connection.execute(text(f"select version_num from {VERSION_TABLE}")).scalar_one()
        except OperationalError as exc:
            raise DatabaseUnavailable(f"cannot open the database {safe_url(self.url)}: {_reason(exc)}") from None

    def revision(self) -> str | None:
        """Return the schema revision stored in the database, or None before the first migration."""
        with self.engine.execution_options(**{READ_ONLY: True}).connect() as connection:
            if not inspect(connection).has_table(VERSION_TABLE):
                return None
            revisions = connection.execute(text(f"select version_num from {VERSION_TABLE}")).scalars().all()
        return revisions[0] if len(revisions) == 1 else None

    def check(self) -> list[str]:
        """Return the tables present, raising `DatabaseUnavailable` when it cannot connect."""
        try:
            with self.engine.connect() as connection:
                return sorted(inspect(connection).get_table_names())
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(f"cannot open the database {safe_url(self.url)}: {_reason(exc)}") from None

    def close(self) -> None:
        self.engine.dispose()


def head_revision() -> str | None:
    """Return the newest migration's revision id, read from the scripts' text without alembic.

    The head is the one revision no other names as its `down_revision`. None when the text
    does not tell (no scripts, a merge, a form the pattern misses): `migrate` then asks alembic.
    tests/core/test_startup.py checks the answer against alembic's own.
    """
    revisions, parents = set(), set()
    for script in (MIGRATIONS_DIR / "versions").glob("*.py"):
        for name, value in _REVISION_LINE.findall(script.read_text(encoding="utf-8")):
            (revisions if name == "revision" else parents).add(value)
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


@contextmanager
def _in_transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    session = sessions()
    try:
        with session.begin():
            yield session
    finally:
        session.close()


def safe_url(url: str) -> str:
    """Return the URL with its password hidden, fit for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return Redactor()(url.split("?")[0])


def _reason(exc: SQLAlchemyError) -> str:
    original = getattr(exc, "orig", None) or exc
    first_line = str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
    return Redactor()(first_line)


def _create_engine(url: str) -> SqlEngine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseUnavailable(
            f"DATABASE_URL is not a database URL ({safe_url(url)}); "
            "use e.g. postgresql+psycopg://user@host/db or sqlite:///path/to/file.db"
        ) from None
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database
            if database and database != ":memory:":
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(
                parsed, connect_args={"timeout": constants.SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
            )
            event.listen(engine, "connect", _sqlite_pragmas)
            event.listen(engine, "begin", _sqlite_begin)
            return engine
        return create_engine(parsed, pool_pre_ping=True)
    except (NoSuchModuleError, ImportError) as exc:
        raise DatabaseUnavailable(
            f"DATABASE_URL names a driver that is not installed ({parsed.drivername}): {exc}"
        ) from None


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # Let SQLAlchemy, not pysqlite, start transactions, so SAVEPOINTs work (SQLAlchemy's
    # "Serializable isolation / Savepoints / Transactional DDL" recipe for pysqlite).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={constants.SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(connection) -> None:
    # IMMEDIATE takes the write lock up front: a read-then-write transaction then waits for
    # the busy timeout instead of failing when another writer got in first. Read-only
    # sessions begin DEFERRED, so (with WAL) they never wait for a writer.
    read_only = connection.get_execution_options().get(READ_ONLY, False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
