"""Fixtures for the security tests: a certs folder made once per session, coordinators serving TLS or
mutual TLS (helpers in tests/support/tls.py; `cluster` / `cluster_factory` come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.server import CoordinatorServer
from tests.support.tls import make_certs, serve


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CA + coordinator (host `coord.test`) + admin + site-a + site-b, made once for the session."""
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tls_server(certs: Path, data_dir: Path) -> Iterator[CoordinatorServer]:
    """Server TLS only: no client certificate asked for."""
    yield from serve(certs, data_dir, mutual=False)


@pytest.fixture
def mtls_server(certs: Path, data_dir: Path) -> Iterator[CoordinatorServer]:
    """Mutual TLS: a client certificate signed by the CA is required."""
    yield from serve(certs, data_dir, mutual=True)
