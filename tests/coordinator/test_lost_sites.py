"""A round stops waiting for a site that went away when it can reach min_sites without it (decision 33).

Real coordinator over gRPC on loopback, SQLite and PostgreSQL; a worker "goes away" by no longer
calling (no heartbeat, no pull), so the scheduler marks it offline after `worker_offline_after_seconds`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc
import numpy as np
import pytest

from fedtune.v1 import admin_pb2
from tests.support.cluster import Admin, Cluster, spec_yaml
from tests.support.fake_worker import FakeWorker
from tests.support.flow import (
    assert_arrays_close,
    committed_version,
    initialize,
    pull_train,
    train_update,
    weighted_mean,
)
from tests.support.waiting import wait_for

OFFLINE_AFTER = 1.5  # seconds of silence before the scheduler marks a worker offline
FAST_LIVENESS = {"worker_offline_after_seconds": OFFLINE_AFTER, "heartbeat_seconds": 0.3}


@contextmanager
def heartbeating(workers: list[FakeWorker]) -> Iterator[None]:
    """Keep `workers` online (a background heartbeat every 0.3 s) for the duration of the block."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(0.3):
            for worker in workers:
                worker.heartbeat()

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def events_of(admin: Admin, experiment_id: str, kind: str) -> list[admin_pb2.Event]:
    stream = admin.WatchEvents(admin_pb2.WatchEventsRequest(experiment_id=experiment_id, follow=False))
    return [e for e in stream if e.kind == kind]


def test_a_round_commits_as_soon_as_the_others_are_in_when_a_site_goes_offline(
    cluster_factory: Callable[..., Cluster],
) -> None:
    # Prepare: a 3-site round (min_sites 2, deadline 120 s); every site leases its task, then c goes silent
    cluster = cluster_factory(**FAST_LIVENESS)
    admin = cluster.admin()
    a, b, c = (cluster.worker(s) for s in ("a", "b", "c"))
    experiment_id, _ = initialize(admin, [a, b, c], spec_yaml(rounds=1, min_sites=2, deadline=120.0))
    rng = np.random.default_rng(5)
    tasks = [pull_train(w) for w in (a, b, c)]
    updates = [train_update(w, t, rng) for w, t in zip((a, b, c), tasks, strict=True)]
    silent_since = time.monotonic()

    # Execute: a and b deliver while staying online; c says nothing more
    with heartbeating([a, b]):
        a.push(tasks[0].task_id, updates[0], num_examples=3)
        b.push(tasks[1].task_id, updates[1], num_examples=5)
        version_id = committed_version(admin, experiment_id, 1, timeout=15)
    took = time.monotonic() - silent_since

    # Assert: committed within seconds (not at the 120 s deadline), with exactly a's and b's mean
    assert took < 10.0, f"round took {took:.1f} s to commit"
    (rnd,) = admin.rounds(experiment_id)
    assert rnd.updates_received == 2 and rnd.tasks_total == 3
    assert rnd.deadline_unix - rnd.closed_unix > 100
    assert_arrays_close(a.fetch(version_id), weighted_mean([(updates[0], 3), (updates[1], 5)]))
    (dropped,) = events_of(admin, experiment_id, "task.dropped")
    assert tasks[2].task_id in dropped.message and "site c has no worker online" in dropped.message
    # c's late push is refused as closed: give the task up, pull the next one
    with pytest.raises(grpc.RpcError) as late:
        c.push(tasks[2].task_id, updates[2], num_examples=4)
    assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (late.value.details() or "").startswith("task_closed:")


def test_a_round_that_needs_the_lost_site_waits_and_says_why_and_the_site_may_still_deliver(
    cluster_factory: Callable[..., Cluster],
) -> None:
    # Prepare: min_sites 3, so the round cannot close without c
    cluster = cluster_factory(**FAST_LIVENESS)
    admin = cluster.admin()
    a, b, c = (cluster.worker(s) for s in ("a", "b", "c"))
    experiment_id, _ = initialize(admin, [a, b, c], spec_yaml(rounds=1, min_sites=3, deadline=120.0))
    rng = np.random.default_rng(6)
    tasks = [pull_train(w) for w in (a, b, c)]
    updates = [train_update(w, t, rng) for w, t in zip((a, b, c), tasks, strict=True)]

    # Execute: a and b deliver; c is silent well past the offline limit
    with heartbeating([a, b]):
        a.push(tasks[0].task_id, updates[0], num_examples=3)
        b.push(tasks[1].task_id, updates[1], num_examples=5)

        def offline_and_waited_for() -> admin_pb2.RoundInfo | None:
            (rnd,) = admin.rounds(experiment_id)
            return rnd if "offline: c" in rnd.waiting_reason else None

        rnd = wait_for(offline_and_waited_for, timeout=10)
        time.sleep(OFFLINE_AFTER)  # a few more scheduler passes: still waiting, c's task still live

        # Assert: still collecting, waiting for c, and it says why
        (rnd,) = admin.rounds(experiment_id)
        assert rnd.state == "collecting" and list(rnd.waiting_for) == ["c"]
        assert "2 update(s) in, min_sites=3" in rnd.waiting_reason
        assert "still waited for" in rnd.waiting_reason
        assert events_of(admin, experiment_id, "task.dropped") == []

        # Execute: c comes back before the deadline and delivers
        assert c.heartbeat(tasks[2].task_id) is False  # its lease is intact: go on
        c.push(tasks[2].task_id, updates[2], num_examples=2)
        version_id = committed_version(admin, experiment_id, 1, timeout=10)

    # Assert: all three in the mean
    want = weighted_mean([(updates[0], 3), (updates[1], 5), (updates[2], 2)])
    assert_arrays_close(a.fetch(version_id), want)


def test_a_round_that_needs_the_lost_site_fails_at_its_deadline(
    cluster_factory: Callable[..., Cluster],
) -> None:
    # Prepare: min_sites 3, a 4 s deadline
    cluster = cluster_factory(**FAST_LIVENESS)
    admin = cluster.admin()
    a, b, c = (cluster.worker(s) for s in ("a", "b", "c"))
    experiment_id, _ = initialize(admin, [a, b, c], spec_yaml(rounds=1, min_sites=3, deadline=4.0))
    rng = np.random.default_rng(7)
    tasks = [pull_train(w) for w in (a, b, c)]
    updates = [train_update(w, t, rng) for w, t in zip((a, b, c), tasks, strict=True)]

    # Execute
    with heartbeating([a, b]):
        a.push(tasks[0].task_id, updates[0], num_examples=3)
        b.push(tasks[1].task_id, updates[1], num_examples=5)
        rnd = wait_for(lambda: (r := admin.rounds(experiment_id)[0]).state == "failed" and r, timeout=15)

    # Assert: the deadline, the last resort, closed it
    assert "deadline passed with 2 update(s)" in rnd.reason and "min_sites=3" in rnd.reason
