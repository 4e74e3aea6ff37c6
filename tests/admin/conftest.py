from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.admin.fake_admin import FakeAdmin, FakeAdminServer
from tests.admin.harness import AdminRun, run_admin
from tests.support.ports import free_port


@pytest.fixture
def fake() -> FakeAdmin:
    return FakeAdmin()


@pytest.fixture
def fake_server(fake: FakeAdmin) -> Iterator[FakeAdminServer]:
    server = FakeAdminServer(fake, free_port())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def admin(fake_server: FakeAdminServer) -> Callable[..., AdminRun]:
    """`admin("--json", "experiment", "list")` runs the CLI against the fake coordinator."""

    def run(*args: str, **kwargs: object) -> AdminRun:
        return run_admin(fake_server.target, *args, **kwargs)  # type: ignore[arg-type]

    return run
