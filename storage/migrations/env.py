"""Alembic environment for the fedtune registry.

The database URL comes from the Alembic config (``storage.db.alembic_config(url)`` sets it);
no alembic.ini is read. A caller may also pass an open connection as
``config.attributes["connection"]``. SQLite runs in batch mode (ALTER TABLE by copy).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text

from storage.db import make_engine
from storage.models import Base

config = context.config
target_metadata = Base.metadata

# Any fixed 64-bit number: serialises concurrent `upgrade` runs against one PostgreSQL database.
_PG_MIGRATION_LOCK = 0x6665_6474_756E_6531


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        context.run_migrations()


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url")
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=bool(url and url.startswith("sqlite")),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: call storage.db.upgrade(url), or `fedtune db upgrade`")
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
