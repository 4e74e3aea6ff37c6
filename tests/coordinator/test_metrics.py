"""The coordinator's Prometheus endpoint, scraped over HTTP while a real round runs over gRPC."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from coordinator.accept import UpdateRejected
from coordinator.metrics import upload_outcome
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.metrics_http import serve_metrics
from fedtune.v1 import worker_pb2
from tests.support.cluster import Cluster, spec_yaml
from tests.support.flow import committed_version, initialize, pull_train, train_update
from tests.support.scrape import Samples, has, scrape, scrape_until, value


def _cluster_with_metrics(cluster_factory: Callable[..., Cluster]) -> tuple[Cluster, str]:
    cluster = cluster_factory(metrics_port=0)
    assert cluster.server.metrics is not None
    return cluster, cluster.server.metrics.url


def _nbytes(arrays: dict[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in arrays.values())


def test_a_scrape_during_a_round_shows_updates_bytes_streams_and_then_the_commit(
    cluster_factory: Callable[..., Cluster],
) -> None:
    # Prepare: sites a and b in a one-round experiment, version 0 stored
    cluster, url = _cluster_with_metrics(cluster_factory)
    admin = cluster.admin()
    a, b = cluster.worker("a"), cluster.worker("b")
    experiment_id, _ = initialize(admin, [a, b], spec_yaml(rounds=1, min_sites=2, sites=["a", "b"]))
    before = scrape(url)
    rng = np.random.default_rng(3)

    # Execute: a fetches and pushes its update; b opens its upload and holds it after the header
    task_a = pull_train(a)
    a.fetch(task_a.model_version_id)
    arrays_a = train_update(a, task_a, rng)
    a.push(task_a.task_id, arrays_a, num_examples=10)
    task_b = pull_train(b)
    arrays_b = train_update(b, task_b, rng)
    go_on = threading.Event()

    def held_upload() -> Iterator[worker_pb2.PushUpdateRequest]:
        requests = b.push_requests(task_b.task_id, arrays_b, num_examples=30)
        yield next(requests)  # the header
        go_on.wait(20)
        yield from requests

    with ThreadPoolExecutor(1) as pool:
        pushing = pool.submit(b.stub.PushUpdate, held_upload(), metadata=b.metadata, timeout=30)
        during = scrape_until(url, lambda s: value(s, "fedtune_open_streams", kind="upload") == 1)
        go_on.set()
        pushing.result()
    committed_version(admin, experiment_id, 1)
    after = scrape_until(url, lambda s: value(s, "fedtune_open_streams", kind="upload") == 0)

    # Assert: during the round
    def grew(samples: Samples, name: str, **labels: str) -> float:
        return value(samples, name, **labels) - value(before, name, **labels)

    assert grew(during, "fedtune_updates_total", outcome="accepted", reason="") == 1
    assert grew(during, "fedtune_fold_seconds_count") == 1
    assert value(during, "fedtune_rounds", state="collecting") == 1
    assert value(during, "fedtune_open_streams", kind="upload") == 1
    assert grew(during, "fedtune_bytes_received_total", method="PushUpdate") > _nbytes(arrays_a)
    assert grew(during, "fedtune_bytes_sent_total", method="FetchTensors") >= _nbytes(arrays_a)
    assert value(during, "fedtune_registry_up") == 1
    for site in ("a", "b"):
        assert value(during, "fedtune_site_last_seen_timestamp_seconds", site=site) > 0
        assert has(during, "fedtune_site_lag_seconds", site=site)
        assert value(during, "fedtune_site_workers_online", site=site) == 1
    assert not has(during, "fedtune_site_last_seen_timestamp_seconds", site="c")  # never connected
    assert value(during, "process_cpu_seconds_total") > 0

    # Assert: after the commit
    assert grew(after, "fedtune_updates_total", outcome="accepted", reason="") == 2
    assert grew(after, "fedtune_fold_seconds_count") == 2
    assert grew(after, "fedtune_commit_seconds_count") == 1
    assert grew(after, "fedtune_commit_seconds_sum") > 0
    assert value(after, "fedtune_rounds", state="committed") == 1
    assert not value(after, "fedtune_rounds", state="collecting")
    assert grew(after, "fedtune_bytes_received_total", method="PushUpdate") > _nbytes(arrays_a) + _nbytes(
        arrays_b
    )
    assert value(after, "fedtune_open_streams", kind="download") == 0
    assert value(after, "fedtune_long_polls") == 0


def test_refused_and_broken_uploads_and_bad_calls_are_counted_by_code(
    cluster_factory: Callable[..., Cluster],
) -> None:
    # Prepare
    cluster, url = _cluster_with_metrics(cluster_factory)
    admin = cluster.admin()
    a, b = cluster.worker("a"), cluster.worker("b")
    initialize(admin, [a, b], spec_yaml(rounds=1, min_sites=2, sites=["a", "b"]))
    task = pull_train(a)
    arrays = train_update(a, task, np.random.default_rng(4))
    intruder = cluster.worker("c", token="wrong-token", register=False)

    # Execute: a push for a task that does not exist, a stream that stops early, a wrong token
    with pytest.raises(grpc.RpcError) as unknown:
        a.push("task-nope", arrays, num_examples=1)
    with pytest.raises(grpc.RpcError) as broken:
        a.push(task.task_id, arrays, num_examples=1, stop_after_chunks=1)
    with pytest.raises(grpc.RpcError) as refused:
        intruder.heartbeat()
    samples = scrape(url)

    # Assert
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert value(samples, "fedtune_updates_total", outcome="rejected", reason="not_found") == 1
    assert (
        value(samples, "fedtune_rpc_errors_total", method="PushUpdate", code="NOT_FOUND", reason="not_found")
        == 1
    )
    assert broken.value.code() == grpc.StatusCode.DATA_LOSS
    assert value(samples, "fedtune_updates_total", outcome="interrupted", reason="incomplete_stream") == 1
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (
        value(
            samples,
            "fedtune_rpc_errors_total",
            method="Heartbeat",
            code="UNAUTHENTICATED",
            reason="unauthenticated",
        )
        == 1
    )
    assert value(samples, "fedtune_open_streams", kind="upload") == 0


def test_a_waiting_long_poll_is_shown_and_gone_when_it_returns(
    cluster_factory: Callable[..., Cluster],
) -> None:
    # Prepare: no experiment, so a pull waits
    cluster, url = _cluster_with_metrics(cluster_factory)
    a = cluster.worker("a")

    # Execute
    with ThreadPoolExecutor(1) as pool:
        pulling = pool.submit(a.pull, 1.5)
        waiting = scrape_until(url, lambda s: value(s, "fedtune_long_polls") == 1)
        assert pulling.result() is None
    after = scrape(url)

    # Assert
    assert value(waiting, "fedtune_long_polls") == 1
    assert value(after, "fedtune_long_polls") == 0


def test_the_metrics_endpoint_is_off_unless_a_port_is_set(cluster: Cluster) -> None:
    # Assert
    assert cluster.settings.metrics_port is None
    assert cluster.server.metrics is None


def test_a_metrics_port_in_use_is_refused_naming_the_setting() -> None:
    # Prepare: a port that is taken
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        # Execute
        with pytest.raises(FedtuneError) as refused:
            serve_metrics(
                CollectorRegistry(),
                "127.0.0.1",
                taken.getsockname()[1],
                setting="metrics_port",
            )
    finally:
        taken.close()

    # Assert
    assert refused.value.code is ErrorCode.UNAVAILABLE and "metrics_port" in refused.value.message


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (None, ("accepted", "")),
        (UpdateRejected(ErrorCode.INVALID_ARGUMENT, "no metric"), ("rejected", "strategy")),
        (FedtuneError(ErrorCode.CHECKSUM_MISMATCH, "x"), ("rejected", "checksum_mismatch")),
        (FedtuneError(ErrorCode.BUSY, "x"), ("rejected", "busy")),
        (FedtuneError(ErrorCode.IDLE_TIMEOUT, "x"), ("interrupted", "idle_timeout")),
        (asyncio.CancelledError(), ("interrupted", "cancelled")),
        (RuntimeError("a secret path /srv/x"), ("rejected", "internal")),
    ],
)
def test_an_upload_outcome_is_one_of_a_few_labels_never_free_text(
    error: BaseException | None, expected: tuple[str, str]
) -> None:
    # Execute / Assert
    assert upload_outcome(error) == expected
