"""An upload still in flight when its round closes ends with FAILED_PRECONDITION "round closed", never
INTERNAL, and the worker moves on (threat model: T-ops-round-closed)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import numpy as np

from fedtune.v1 import admin_pb2, worker_pb2
from tests.support.cluster import Cluster, spec_yaml
from tests.support.flow import initialize, pull_train, train_update
from tests.support.waiting import wait_for


def _held_stream(
    requests: Iterator[worker_pb2.PushUpdateRequest], sent_first: threading.Event, release: threading.Event
) -> Iterator[worker_pb2.PushUpdateRequest]:
    """The header and one chunk, then the rest only after `release`."""
    for count, request in enumerate(requests):
        if count == 2:
            sent_first.set()
            release.wait(20)
        yield request


def test_an_upload_in_flight_when_its_round_closes_gets_round_closed(cluster: Cluster) -> None:
    # Prepare
    admin = cluster.admin()
    workers = [cluster.worker(site) for site in ("a", "b", "c")]
    experiment_id, _ = initialize(admin, workers, spec_yaml(rounds=1, min_sites=3))
    task = pull_train(workers[0])
    arrays = train_update(workers[0], task, np.random.default_rng(1))
    sent_first, release = threading.Event(), threading.Event()
    requests = workers[0].push_requests(task.task_id, arrays, num_examples=5, chunk_bytes=64)
    upload = workers[0].stub.PushUpdate.future(
        _held_stream(requests, sent_first, release), metadata=workers[0].metadata, timeout=30
    )
    assert sent_first.wait(10)
    spool = cluster.settings.data_dir / "spool"
    wait_for(lambda: any(spool.rglob("*.partial")), timeout=5)
    # Execute: the round closes (the experiment is aborted, its spool removed) under the stream
    admin.AbortExperiment(admin_pb2.ExperimentRef(experiment_id=experiment_id, reason="operator"))
    release.set()
    err = upload.exception(timeout=20)
    # Assert
    assert isinstance(err, grpc.RpcError)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    assert "round closed" in (err.details() or "") or "task_closed" in (err.details() or "")
    assert not any(spool.rglob("*.partial")), "nothing of the closed round is left in the spool"
