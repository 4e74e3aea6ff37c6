"""No site can starve another: per-site limits on open calls, idle streams end, cancelled long-polls
free their place, and idle sites cost the coordinator no thread (threat model: T-capacity-*)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from fedtune.v1 import admin_pb2, common_pb2, worker_pb2, worker_pb2_grpc
from tests.support.cluster import Cluster
from tests.support.waiting import wait_for


def _metadata(site: str, token: str) -> list[tuple[str, str]]:
    return [("x-fedtune-site", site), ("authorization", f"Bearer {token}")]


def _timed(call: Callable[[], object]) -> float:
    started = time.monotonic()
    call()
    return time.monotonic() - started


def _silent_stream(release: threading.Event) -> Iterator[worker_pb2.PushUpdateRequest]:
    """A PushUpdate request stream that sends nothing until `release` (a hostile or stuck client)."""
    release.wait(30)
    return
    yield  # pragma: no cover  (makes this a generator)


def _code_and_details(future: grpc.Future) -> tuple[grpc.StatusCode, str]:
    err = future.exception(timeout=30)
    assert isinstance(err, grpc.RpcError), f"expected an error, got {future.result()}"
    return err.code(), err.details() or ""


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Cluster:
    return cluster_factory(max_site_pulls=2, max_site_uploads=2, stream_idle_seconds=1.5)


def test_long_polls_over_the_site_limit_are_refused_as_busy_and_others_are_served(cluster: Cluster) -> None:
    # Prepare
    hog = cluster.worker("a")
    other = cluster.worker("b")
    admin = cluster.admin()
    pull = hog.stub.PullTask.future
    request = worker_pb2.PullTaskRequest(worker_id=hog.worker_id, wait_seconds=4)
    # Execute
    polls = [pull(request, metadata=hog.metadata, timeout=20) for _ in range(12)]
    time.sleep(0.5)
    heartbeat_s = _timed(lambda: other.heartbeat())
    admin_s = _timed(lambda: admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=5))
    refused = [f for f in polls if f.done()]
    # Assert
    assert len(refused) == 10, "all but the per-site limit of 2 long-polls end at once"
    for future in refused:
        code, details = _code_and_details(future)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details.startswith("busy:") and "per-site limit" in details
    assert heartbeat_s < 2 and admin_s < 2
    for future in polls:
        future.cancel()


def test_silent_upload_streams_are_limited_per_site_and_end_when_idle(cluster: Cluster) -> None:
    # Prepare
    hog = cluster.worker("a")
    other = cluster.worker("b")
    release = threading.Event()
    # Execute
    streams = [
        hog.stub.PushUpdate.future(_silent_stream(release), metadata=hog.metadata, timeout=30)
        for _ in range(8)
    ]
    time.sleep(0.3)
    heartbeat_s = _timed(lambda: other.heartbeat())
    outcomes = [_code_and_details(f) for f in streams]
    release.set()
    # Assert
    busy = [d for c, d in outcomes if c == grpc.StatusCode.RESOURCE_EXHAUSTED]
    idle = [d for c, d in outcomes if c == grpc.StatusCode.DEADLINE_EXCEEDED]
    assert len(busy) == 6 and all(d.startswith("busy:") for d in busy)
    assert len(idle) == 2 and all(d.startswith("idle_timeout:") and "1.5 s" in d for d in idle)
    assert heartbeat_s < 2
    limits = cluster.server.worker_servicer.limits
    assert wait_for(lambda: limits.open_calls("PushUpdate") == 0, timeout=5)


def test_a_cancelled_long_poll_frees_its_place_at_once(cluster: Cluster) -> None:
    # Prepare
    worker = cluster.worker("a")
    request = worker_pb2.PullTaskRequest(worker_id=worker.worker_id, wait_seconds=4)
    notifier = cluster.server.services.notifier
    first = [worker.stub.PullTask.future(request, metadata=worker.metadata, timeout=20) for _ in range(2)]
    wait_for(lambda: notifier.waiting_sites() == 2, timeout=5)
    # Execute
    for future in first:
        future.cancel()
    # Assert
    assert wait_for(lambda: notifier.waiting_sites() == 0, timeout=2)
    assert worker.pull(wait_seconds=0.2) is None  # not refused as busy: the places were freed


def test_idle_long_polling_sites_hold_no_thread_and_do_not_delay_a_heartbeat(
    cluster_factory: Callable[..., Cluster],
) -> None:
    # Prepare: 150 sites (more than the old server's 64 threads), each long-polling on one shared channel
    cluster = cluster_factory()
    admin = cluster.admin()
    tokens = {
        f"idle-{i}": admin.AddSite(admin_pb2.AddSiteRequest(name=f"idle-{i}")).token for i in range(150)
    }
    channel = grpc.insecure_channel(cluster.target)
    stub = worker_pb2_grpc.WorkerStub(channel)
    workers = {
        site: stub.Register(worker_pb2.RegisterRequest(site=site, token=token), timeout=10).worker_id
        for site, token in tokens.items()
    }
    watcher = cluster.worker("a")
    threads_before = threading.active_count()
    # Execute
    polls = [
        stub.PullTask.future(
            worker_pb2.PullTaskRequest(worker_id=workers[site], wait_seconds=5),
            metadata=_metadata(site, token),
            timeout=30,
        )
        for site, token in tokens.items()
    ]
    notifier = cluster.server.services.notifier
    wait_for(lambda: notifier.waiting_sites() == 150, timeout=20)
    threads_waiting = threading.active_count()
    heartbeat_s = _timed(lambda: watcher.heartbeat())
    admin_s = _timed(lambda: admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=5))
    # Assert
    assert threads_waiting - threads_before < 10, "an idle long-poll must not hold a thread"
    assert heartbeat_s < 2 and admin_s < 2
    for future in polls:
        future.cancel()
    channel.close()


def _chunk_first_stream(release: threading.Event) -> Iterator[worker_pb2.PushUpdateRequest]:
    """A PushUpdate stream whose first message is a chunk (INVALID_ARGUMENT once it is read)."""
    release.wait(30)
    yield worker_pb2.PushUpdateRequest(chunk=common_pb2.TensorChunk())


def test_uploads_past_the_coordinators_total_wait_for_a_place_instead_of_being_refused(
    cluster_factory: Callable[..., Cluster],
) -> None:
    # Prepare: one upload place in all, held by site a's silent stream (ends idle after 1.5 s)
    cluster = cluster_factory(max_open_uploads=1, stream_idle_seconds=1.5)
    hog, other = cluster.worker("a"), cluster.worker("b")
    never = threading.Event()
    held = hog.stub.PushUpdate.future(_silent_stream(never), metadata=hog.metadata, timeout=30)
    limits = cluster.server.worker_servicer.limits
    assert wait_for(lambda: limits.open_calls("PushUpdate") == 1, timeout=5)
    # Execute: site b's stream arrives while the place is taken
    ready = threading.Event()
    ready.set()
    started = time.monotonic()
    waiting = other.stub.PushUpdate.future(_chunk_first_stream(ready), metadata=other.metadata, timeout=30)
    code, details = _code_and_details(waiting)
    waited = time.monotonic() - started
    never.set()
    # Assert: b was served (its bad first message judged) once a's stream ended, never told busy
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "header" in details
    assert _code_and_details(held)[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert waited >= 1.0
