"""Fixtures for the storage suite: a migrated registry on each backend, and a blob store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.blobs import LocalBlobStore
from storage.db import open_registry
from storage.models import Experiment, new_id
from storage.uow import UnitOfWorkFactory


@pytest.fixture
def uow_factory(database_url: str) -> Iterator[UnitOfWorkFactory]:
    """A registry migrated to head (SQLite, and PostgreSQL when configured)."""
    engine, factory = open_registry(database_url)
    try:
        yield factory
    finally:
        engine.dispose()


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def add_experiment(uow_factory: UnitOfWorkFactory, name: str = "demo") -> str:
    experiment_id = new_id("exp")
    with uow_factory() as uow:
        uow.session.add(Experiment(id=experiment_id, name=name, spec_yaml="name: demo\n", spec_json="{}"))
        uow.commit()
    return experiment_id


@pytest.fixture
def experiment_id(uow_factory: UnitOfWorkFactory) -> str:
    return add_experiment(uow_factory)
