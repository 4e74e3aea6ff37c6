"""The worker daemon never gives up on a transient RESOURCE_EXHAUSTED: through a real coordinator whose
per-site limit refuses the worker's call with ``busy:``, the worker's connection backs off and retries
until the place is free (decision 28; issue 13: "it backs off and retries")."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc

from fedtune.v1 import worker_pb2
from tests.support.cluster import SITES, Cluster
from worker.connection import Connection
from worker.settings import WorkerSettings


def test_a_call_refused_busy_by_the_site_limit_is_retried_until_it_is_served(
    cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    # Prepare: one long-poll per site; another client of site "a" holds it for 1.5 s
    cluster = cluster_factory(max_site_pulls=1)
    holder = cluster.worker("a")
    held = holder.stub.PullTask.future(
        worker_pb2.PullTaskRequest(worker_id=holder.worker_id, wait_seconds=1.5),
        metadata=holder.metadata,
        timeout=30,
    )
    limits = cluster.server.worker_servicer.limits
    deadline = time.monotonic() + 5
    while limits.open_calls("PullTask") < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    refusals: list[tuple[str, grpc.StatusCode]] = []
    settings = WorkerSettings(
        coordinator=cluster.target,
        site="a",
        token=SITES["a"],
        data_root=tmp_path,
        model_root=tmp_path / "models",
        max_backoff_seconds=0.4,
    )
    connection = Connection(settings, on_rpc_error=lambda method, code: refusals.append((method, code)))
    connection.backoff_base_seconds = 0.05
    try:
        connection.register({"kind": "cpu"}, {}, "test")
        # Execute: refused `busy:` while the other long-poll is open, served once it ends
        started = time.monotonic()
        answer = connection.pull_task(0.1)
        waited = time.monotonic() - started
    finally:
        connection.close()
    # Assert: refused at least once, never raised, and served after the holder's long-poll ended
    assert answer is None
    assert refusals and set(refusals) == {("PullTask", grpc.StatusCode.RESOURCE_EXHAUSTED)}
    assert waited >= 0.5
    assert held.result(timeout=30).has_task is False
