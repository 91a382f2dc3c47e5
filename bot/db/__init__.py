"""The database: connection, migrations and repositories.

SQLite by default (WAL, a busy timeout) in the data directory; PostgreSQL through DATABASE_URL.
Alembic migrations run on start and by `python -m bot migrate`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
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
        config = AlembicConfig()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        try:
            with self.engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
            with self.engine.connect() as connection:
                return connection.execute(text("select version_num from alembic_version")).scalar_one()
        except OperationalError as exc:
            raise DatabaseUnavailable(f"cannot open the database {safe_url(self.url)}: {_reason(exc)}") from None

    def check(self) -> list[str]:
        """Return the tables present, raising `DatabaseUnavailable` when it cannot connect."""
        try:
            with self.engine.connect() as connection:
                return sorted(inspect(connection).get_table_names())
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(f"cannot open the database {safe_url(self.url)}: {_reason(exc)}") from None

    def close(self) -> None:
        self.engine.dispose()


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
