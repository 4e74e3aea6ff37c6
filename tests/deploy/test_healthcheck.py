"""docker/healthcheck.py (the coordinator image's HEALTHCHECK) against a real grpc.health.v1 server."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from types import ModuleType

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.deploy.helpers import DOCKER_DIR


def _load_probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fedtune_healthcheck", DOCKER_DIR / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


probe = _load_probe()


@pytest.fixture
def health_server(port: int) -> Iterator[tuple[str, health.HealthServicer]]:
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(grace=None)


def test_probe_passes_when_the_server_is_serving(health_server: tuple[str, health.HealthServicer]) -> None:
    # Prepare
    target, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)

    # Execute / Assert
    assert probe.main(["healthcheck.py", target]) == 0


def test_probe_fails_when_the_server_is_not_serving(health_server: tuple[str, health.HealthServicer]) -> None:
    # Prepare
    target, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)

    # Execute / Assert
    assert probe.main(["healthcheck.py", target]) == 1


def test_probe_fails_when_nothing_listens(port: int) -> None:
    assert probe.main(["healthcheck.py", f"127.0.0.1:{port}"]) == 1
