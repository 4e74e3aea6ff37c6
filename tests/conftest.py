"""Fixtures shared by the whole suite.

`database_url` runs a test against SQLite and, when FEDTUNE_TEST_DATABASE_URL is set (CI sets it
to the local PostgreSQL), against a fresh PostgreSQL database made for that test and dropped after.
`cluster_factory` / `cluster` start an in-process coordinator on that database (tests/support/cluster.py).
Conftests hold fixtures only; helpers shared between test packages live in tests/support/.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.ports import free_port

if TYPE_CHECKING:  # imported in the fixture, so a run that needs no coordinator does not load one
    from tests.support.cluster import Cluster

POSTGRES_URL = os.environ.get("FEDTUNE_TEST_DATABASE_URL", "")
DATABASE_BACKENDS = ["sqlite"] + (["postgresql"] if POSTGRES_URL else [])


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "fedtune-data"
    path.mkdir()
    return path


def _postgres_database() -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin_url = make_url(POSTGRES_URL)
    name = f"fedtune_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture(params=DATABASE_BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (no tables yet): SQLite in tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def cluster_factory(tmp_path: Path, database_url: str) -> Iterator[Callable[..., Cluster]]:
    """`cluster_factory(**settings_overrides)` starts a coordinator; all are stopped after the test."""
    from tests.support.cluster import Cluster, make_settings

    made: list[Cluster] = []

    def make(**overrides: Any) -> Cluster:
        cluster = Cluster(make_settings(tmp_path / "data", database_url, **overrides))
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Cluster:
    return cluster_factory()
