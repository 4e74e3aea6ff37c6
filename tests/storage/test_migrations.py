"""Alembic migrations: from empty to head, no drift against storage/models.py, idempotent."""

from __future__ import annotations

import subprocess
import sys

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, MetaData, String, func, insert, inspect, select, text

from storage import db
from storage.models import Base, Site
from storage.uow import UnitOfWorkFactory


def _schema_diff(url: str, metadata: MetaData) -> list[object]:
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def _table_names(url: str) -> set[str]:
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def test_empty_database_has_no_revision(database_url: str) -> None:
    assert db.current_revision(database_url) is None


def test_upgrade_creates_every_table_at_head(database_url: str) -> None:
    db.upgrade(database_url)

    assert db.current_revision(database_url) == db.head_revision()
    assert _table_names(database_url) == set(Base.metadata.tables) | {"alembic_version"}


def test_migrated_schema_matches_models_exactly(database_url: str) -> None:
    db.upgrade(database_url)

    assert _schema_diff(database_url, Base.metadata) == []


def test_drift_check_notices_a_column_missing_from_migrations(database_url: str) -> None:
    # Prepare: a copy of the models with one extra column that no migration creates
    db.upgrade(database_url)
    drifted = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.sorted_tables:
        table.to_metadata(drifted)
    drifted.tables["sites"].append_column(Column("region", String(50), nullable=True))

    diff = _schema_diff(database_url, drifted)

    assert [entry[0] for entry in diff if isinstance(entry, tuple)] == ["add_column"]  # type: ignore[index]


def test_upgrade_twice_is_a_no_op(database_url: str) -> None:
    # Prepare
    db.upgrade(database_url)
    engine = db.make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(insert(Site).values(name="a", token_hash="x", created_at=1.0))

    # Execute
    db.upgrade(database_url)

    # Assert: same revision, one version row, data untouched
    assert db.current_revision(database_url) == db.head_revision()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
        assert conn.execute(select(func.count()).select_from(Site.__table__)).scalar_one() == 1
    engine.dispose()


@pytest.mark.slow
def test_concurrent_upgrades_from_several_processes_all_succeed(database_url: str) -> None:
    # Alembic's `context`/`op` are process globals, so concurrency means processes, not threads.
    code = "import sys; from storage.db import upgrade; upgrade(sys.argv[1])"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, database_url], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]

    results = [(proc.wait(timeout=120), proc.stderr.read() if proc.stderr else "") for proc in procs]

    assert [rc for rc, _ in results] == [0, 0, 0, 0], results
    assert db.current_revision(database_url) == db.head_revision()


def test_downgrade_to_base_removes_every_table(database_url: str) -> None:
    db.upgrade(database_url)

    command.downgrade(db.alembic_config(database_url), "base")

    assert _table_names(database_url) <= {"alembic_version"}
    assert db.current_revision(database_url) is None


def test_open_registry_upgrades_and_returns_a_working_unit_of_work(database_url: str) -> None:
    engine, uow_factory = db.open_registry(database_url)

    with uow_factory() as uow:
        uow.session.add(Site(name="hospital-a", token_hash="0" * 64))
        uow.commit()

    assert db.current_revision(database_url) == db.head_revision()
    assert isinstance(uow_factory, UnitOfWorkFactory)
    engine.dispose()


def test_open_registry_in_memory_uses_create_all() -> None:
    engine, uow_factory = db.open_registry("sqlite://")

    with uow_factory() as uow:
        uow.session.add(Site(name="a", token_hash="x"))
        uow.commit()
    with uow_factory() as uow:
        assert uow.session.scalar(select(func.count()).select_from(Site)) == 1
    engine.dispose()


def test_create_all_refuses_a_persistent_database(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")

    with pytest.raises(ValueError, match="Alembic"):
        db.create_all(engine)
    engine.dispose()


def test_current_revision_does_not_create_a_missing_sqlite_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "absent.db"

    assert db.current_revision(f"sqlite:///{path}") is None
    assert not path.exists()
