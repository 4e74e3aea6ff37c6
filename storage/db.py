"""Engines, sessions and schema upgrades (Alembic) for the registry.

The schema is owned by Alembic (``storage/migrations``): ``open_registry(url)`` upgrades to head
and returns the engine and a unit-of-work factory. ``create_all`` is only for throwaway
in-memory databases.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from storage.file_lock import exclusive_file_lock
from storage.uow import READ_ONLY_OPTION, RELAXED_OPTION, UnitOfWorkFactory

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version"


def default_database_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'fedtune.db'}"


def _is_memory_sqlite(url: str) -> bool:
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`. SQLite gets WAL, full fsync, foreign keys and real transactions.

    pysqlite by default neither begins a transaction before DDL nor before SELECT, so a
    migration that dies midway would leave half a schema, and a read-then-write unit of work
    could hit SQLITE_BUSY_SNAPSHOT. We take over BEGIN ourselves (the recipe in SQLAlchemy's
    SQLite docs) and use BEGIN IMMEDIATE: one writer at a time, waiting up to `timeout`.
    """
    if not url.startswith("sqlite"):
        server = create_engine(url, pool_pre_ping=True, **kwargs)

        @event.listens_for(server, "begin")
        def _relaxed_commit(conn):  # type: ignore[no-untyped-def]
            if conn.get_execution_options().get(RELAXED_OPTION, False):
                conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")

        return server
    if _is_memory_sqlite(url):
        kwargs.setdefault("poolclass", StaticPool)  # one shared connection: one shared database
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # we emit BEGIN (below); pysqlite must not
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn):  # type: ignore[no-untyped-def]
        # A read-only unit of work (``UnitOfWorkFactory.reader``) takes no write lock: in WAL mode it
        # reads a snapshot while a writer commits, so authentication and checks do not queue behind
        # commits. Everything that may write begins IMMEDIATE (one writer at a time, no upgrade race).
        options = conn.get_execution_options()
        read_only = options.get(READ_ONLY_OPTION, False)
        if not read_only:  # a relaxed commit skips the WAL's fsync (decision 42); every other one syncs
            relaxed = options.get(RELAXED_OPTION, False)
            conn.exec_driver_sql(f"PRAGMA synchronous={'NORMAL' if relaxed else 'FULL'}")
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    """The Alembic configuration for `url`; no alembic.ini is needed."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.set_main_option("file_template", "%%(year)d_%%(month).2d_%%(day).2d_%%(rev)s_%%(slug)s")
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Apply Alembic migrations up to `revision` (``fedtune db upgrade``). Safe to run twice, and from
    several processes at once: PostgreSQL serialises them with an advisory lock (migrations/env.py), a
    SQLite file with a lock file beside it, so the later ones find the schema at `revision` and do
    nothing (two coordinators, or `fedtune db upgrade` and a coordinator, started together)."""
    from alembic import command

    with _sqlite_migration_lock(url):
        command.upgrade(alembic_config(url), revision)


@contextmanager
def _sqlite_migration_lock(url: str) -> Iterator[None]:
    """Hold `<database>.migrate.lock` (flock) for a SQLite file database; nothing for other databases.

    BEGIN IMMEDIATE alone was seen not to serialise the first upgrades of a new file: under load one of
    two concurrent upgrades failed creating a table. The lock makes the order explicit."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or _is_memory_sqlite(url):
        yield
        return
    database = Path(str(parsed.database))
    database.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_file_lock(database.with_name(database.name + ".migrate.lock")):
        yield


def head_revision() -> str:
    """The newest migration shipped with this code."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    assert head is not None, "storage/migrations/versions has no migration"
    return head


def current_revision(url: str) -> str | None:
    """The revision the database at `url` is at; None for an empty (or missing SQLite) database."""
    from alembic.runtime.migration import MigrationContext

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not _is_memory_sqlite(url):
        if not Path(str(parsed.database)).exists():
            return None  # do not create the file just to look
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(VERSION_TABLE):
                return None
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def open_registry(url: str) -> tuple[Engine, UnitOfWorkFactory]:
    """Upgrade the database at `url` to head, then return its engine and a unit-of-work factory.

    The coordinator's bootstrap calls this once at start.
    """
    if _is_memory_sqlite(url):
        engine = make_engine(url)
        create_all(engine)
        return engine, UnitOfWorkFactory(make_session_factory(engine))
    upgrade(url)
    engine = make_engine(url)
    return engine, UnitOfWorkFactory(make_session_factory(engine))


def create_all(engine: Engine) -> None:
    """Create the tables directly, without Alembic: ONLY for throwaway in-memory databases."""
    if not _is_memory_sqlite(str(engine.url)):
        raise ValueError("create_all is only for in-memory SQLite; use storage.db.upgrade(url) (Alembic)")
    from storage.models import Base

    Base.metadata.create_all(engine)
