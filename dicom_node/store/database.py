"""The database: one engine per process (SQLite file by default, PostgreSQL by URL), sessions,
and the schema brought to the newest Alembic revision. One session per unit of work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.store.paths import use_spool_root


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before the C-STORE is acknowledged (nothing acknowledged is lost).
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # SQLAlchemy emits BEGIN itself (`_sqlite_begin`), so pysqlite must not.
    dbapi_connection.isolation_level = None


SQLITE_BEGIN = "sqlite_begin"


def _sqlite_begin(connection: Connection) -> None:
    """Start SQLite transactions with BEGIN IMMEDIATE: the write lock is taken at the start, so a
    transaction that reads and then writes (the audit chain always does) waits its turn instead of
    failing with SQLITE_BUSY on the lock upgrade. Long read-only work (audit export) may ask for
    a deferred transaction with `execution_options(sqlite_begin="DEFERRED")`."""
    mode = connection.get_execution_options().get(SQLITE_BEGIN, "IMMEDIATE")
    if mode not in {"IMMEDIATE", "DEFERRED", "EXCLUSIVE"}:
        raise ValueError(f"unknown SQLite transaction mode {mode!r}")
    connection.exec_driver_sql(f"BEGIN {mode}")


def make_engine(url: str) -> Engine:
    """One engine per process. SQLite files get WAL, full sync and a busy timeout."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, connect_args=POSTGRES_CONNECT_ARGS)


# A server that does not answer fails the connection in seconds instead of hanging: connect
# timeout, TCP keepalives and a TCP user timeout for a silent network, a lock timeout for a
# transaction that waits too long for another's lock (libpq parameters).
POSTGRES_CONNECT_ARGS: dict[str, str | int] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 15000,
    "options": "-c lock_timeout=15000",
}


def libpq_url(url: str) -> str:
    """The SQLAlchemy URL of a PostgreSQL database as libpq takes it (no driver name)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def make_session_factory(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(engine, expire_on_commit=False)


MIGRATION_LOCK = 0x44434D4E  # "DCMN": the advisory lock key of schema migrations


def upgrade_schema(engine: Engine) -> None:
    """Bring the database to the newest Alembic revision (idempotent).

    Processes starting together (`serve` and `work`) must not migrate at once: on PostgreSQL a
    transaction-scoped advisory lock serialises them (the DDL is transactional, so the second
    process then finds the schema at head); on SQLite the write lock taken by BEGIN IMMEDIATE does.
    """
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def open_database(url: str, spool_root: Path | None = None) -> sessionmaker[Session]:
    """One engine per process, schema migrated to the newest revision; with `spool_root`, its
    sessions keep spool paths relative to it (`paths`)."""
    engine = make_engine(url)
    upgrade_schema(engine)
    sessions = make_session_factory(engine)
    if spool_root is not None:
        use_spool_root(sessions, spool_root)
    return sessions


def reading(sessions: sessionmaker[Session]) -> Session:
    """A session for long read-only work on one snapshot. On SQLite a deferred transaction (WAL
    readers see a snapshot), so that writers on the C-STORE path are not held up meanwhile."""
    engine = sessions.kw["bind"]
    if engine.dialect.name == "sqlite":
        return sessions(bind=engine.execution_options(**{SQLITE_BEGIN: "DEFERRED"}))
    # one snapshot for the whole read: rows and head agree even while writers go on
    return sessions(bind=engine.execution_options(isolation_level="REPEATABLE READ"))
