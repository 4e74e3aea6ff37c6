"""Fixtures for the worker daemon tests: a fake coordinator on 127.0.0.1 and settings pointing at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.fake_coordinator import FakeCoordinator
from worker.connection import Connection
from worker.settings import WorkerSettings


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeCoordinator]:
    spool = tmp_path / "spool"
    spool.mkdir()
    coordinator = FakeCoordinator(spool)
    try:
        yield coordinator
    finally:
        coordinator.stop()


@pytest.fixture
def settings(tmp_path: Path, fake: FakeCoordinator) -> WorkerSettings:
    data_root = tmp_path / "data"
    data_root.mkdir()
    return WorkerSettings(
        coordinator=fake.address,
        site="site-a",
        token="secret-a",
        data_root=data_root,
        model_root=tmp_path / "models",
        chunk_bytes=1024,
        max_backoff_seconds=0.2,
        pull_wait_seconds=0.5,
    )


@pytest.fixture
def connection(settings: WorkerSettings) -> Iterator[Connection]:
    conn = Connection(settings)
    conn.backoff_base_seconds = 0.01
    try:
        yield conn
    finally:
        conn.close()
