"""Fixtures for the worker daemon tests: a fake coordinator on 127.0.0.1 and settings pointing at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.cluster import E2E_LABELS, E2E_SITES, Cluster, running_cluster
from tests.daemon.fake_coordinator import FakeCoordinator
from tests.fixtures.tiny import make_classification_data, make_tiny_model
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


# --- end-to-end fixtures: the real CLIs as subprocesses (tests/daemon/cluster.py) ---
@pytest.fixture
def cluster(tmp_path: Path, port: int) -> Iterator[Cluster]:
    yield from running_cluster(tmp_path, port)


@pytest.fixture
def model_root(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    make_tiny_model(root, "tiny-bert", "bert")
    return root


@pytest.fixture
def data_roots(tmp_path: Path) -> dict[str, Path]:
    roots = {}
    for seed, site in enumerate(E2E_SITES):
        roots[site] = tmp_path / "data" / site
        make_classification_data(roots[site], E2E_LABELS, n_train=48, n_eval=16, seed=seed)
    return roots
