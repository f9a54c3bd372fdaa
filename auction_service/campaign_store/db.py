"""The campaign store's engine, sessions and migrations.

``CAMPAIGN_DB_URL`` picks the database: a SQLite file by default, PostgreSQL (psycopg)
in compose. The code above this module is the same for both.

SQLite needs three things to be a safe multi-process store:
- WAL, so the auction service's 250 ms reads never wait on the ad manager's writes;
- a busy timeout, so a writer waits for the write lock instead of failing at once;
- ``BEGIN IMMEDIATE`` for write transactions (``begin_write``): a deferred transaction
  that reads and then writes fails with "database is locked" when another writer
  committed in between, and the busy timeout cannot help it.

Within one process, write transactions also queue on a lock before ``BEGIN IMMEDIATE``:
SQLite's busy handler polls with sleeps growing to 100 ms, so forty request threads
contending for the write lock convoyed (a third of the events timed out at 200 visits/s),
while a lock hands over the moment the writer before returns its connection.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from adstream.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Connection execution option that makes SQLite start the transaction with BEGIN IMMEDIATE.
WRITE_OPTION = "adstream_write"
# Any constant: PostgreSQL serialises concurrent `migrate` calls (service and ad manager starting together) on it.
_MIGRATION_LOCK_ID = 0x4144_5354
_HOLDS_WRITER = "adstream_holds_writer"


def make_engine(settings: Settings, **engine_options: Any) -> Engine:
    """The campaign store's engine for ``settings.campaign_db_url``."""
    url = make_url(settings.campaign_db_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(
            url,
            pool_pre_ping=True,
            pool_timeout=settings.campaign_db_connect_timeout_s,
            connect_args=postgres_timeouts(settings),
            **engine_options,
        )
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        # SQLite has no statement timeout; its busy timeout is the lock timeout.
        connect_args={"timeout": settings.campaign_db_lock_timeout_s, "check_same_thread": False},
        **engine_options,
    )

    @event.listens_for(engine, "connect")
    def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own implicit BEGIN is turned off; `_begin` below emits it (SQLAlchemy's documented recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    writer = threading.Lock()  # this process's turn at the write lock; any thread may hand it back

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(WRITE_OPTION, False)
        if immediate:
            writer.acquire()
            connection.info[_HOLDS_WRITER] = True
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    # A connection goes back to the pool once its transaction committed or rolled back.
    @event.listens_for(engine, "checkin")
    def _return_writer(_dbapi_connection: Any, record: Any) -> None:
        if record is not None and record.info.pop(_HOLDS_WRITER, False):
            writer.release()

    @event.listens_for(engine, "invalidate")
    def _invalidated(_dbapi_connection: Any, record: Any, _exception: Any) -> None:
        _return_writer(_dbapi_connection, record)

    return engine


def postgres_timeouts(settings: Settings) -> dict[str, Any]:
    """libpq's connect timeout (whole seconds) and the server's statement and lock timeouts, per connection."""
    return {
        "connect_timeout": max(1, round(settings.campaign_db_connect_timeout_s)),
        "options": (
            f"-c statement_timeout={round(settings.campaign_db_statement_timeout_s * 1000)}"
            f" -c lock_timeout={round(settings.campaign_db_lock_timeout_s * 1000)}"
        ),
    }


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (the store returns plain values anyway)."""
    return sessionmaker(engine, expire_on_commit=False)


def begin_write(session: Session) -> None:
    """Start ``session``'s transaction as a writer (SQLite: BEGIN IMMEDIATE; PostgreSQL: no difference).

    Does nothing when the session is already in a transaction: the caller chose how it began.
    """
    if not session.in_transaction():
        session.connection(execution_options={WRITE_OPTION: True})


def migrate(settings: Settings, engine: Engine | None = None) -> None:
    """Upgrade the campaign store to the newest migration; a store already there is left as it is."""
    owned = engine is None
    engine = engine or make_engine(settings)
    try:
        with engine.connect() as connection:
            connection.execution_options(**{WRITE_OPTION: True})
            with connection.begin():
                if connection.dialect.name == "postgresql":
                    connection.execute(select(func.pg_advisory_xact_lock(_MIGRATION_LOCK_ID)))
                config = Config()
                config.set_main_option("script_location", str(MIGRATIONS_DIR))
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
    finally:
        if owned:
            engine.dispose()
