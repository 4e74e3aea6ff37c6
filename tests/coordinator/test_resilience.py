"""Disconnects, resumed uploads, deadlines and coordinator restarts over real gRPC."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc
import numpy as np

from tests.support.cluster import Cluster, spec_yaml
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


def push_then_hang(
    worker: FakeWorker, task_id: str, arrays: dict[str, np.ndarray], chunks: int
) -> grpc.Future:
    """Start an upload that sends `chunks` chunks and then stalls (until the call is cancelled)."""
    stall = threading.Event()

    def requests():  # type: ignore[no-untyped-def]
        yield from worker.push_requests(task_id, arrays, num_examples=4, stop_after_chunks=chunks)
        stall.wait(10)

    return worker.stub.PushUpdate.future(requests(), metadata=worker.metadata, timeout=30)


def test_disconnect_mid_upload_is_not_folded_and_the_round_completes(cluster: Cluster) -> None:
    # Prepare
    admin = cluster.admin()
    workers = [cluster.worker(s) for s in ("a", "b", "c")]
    experiment_id, _ = initialize(admin, workers, spec_yaml(rounds=1, min_sites=2, deadline=3.0))
    rng = np.random.default_rng(2)
    tasks = [pull_train(w) for w in workers]
    updates = [train_update(w, t, rng) for w, t in zip(workers, tasks, strict=True)]

    # Execute: c disconnects after 2 chunks; a and b finish
    future = push_then_hang(workers[2], tasks[2].task_id, updates[2], chunks=2)
    wait_for(lambda: workers[2].upload_status(tasks[2].task_id).in_progress)
    future.cancel()
    workers[0].push(tasks[0].task_id, updates[0], num_examples=7)
    workers[1].push(tasks[1].task_id, updates[1], num_examples=9)
    version_id = committed_version(admin, experiment_id, 1, timeout=10)

    # Assert: the deadline closed the round with a and b only
    (rnd,) = admin.rounds(experiment_id)
    assert rnd.updates_received == 2 and rnd.tasks_total == 3
    assert_arrays_close(workers[0].fetch(version_id), weighted_mean([(updates[0], 7), (updates[1], 9)]))


def test_broken_upload_resumes_from_the_reported_position(cluster: Cluster) -> None:
    # Prepare
    admin = cluster.admin()
    a = cluster.worker("a")
    experiment_id, _ = initialize(admin, [a], spec_yaml(rounds=1, min_sites=1))
    task = pull_train(a)
    update = train_update(a, task, np.random.default_rng(3))
    future = push_then_hang(a, task.task_id, update, chunks=2)
    wait_for(lambda: a.upload_status(task.task_id).in_progress)
    # in_progress turns true with the header; give the two chunks time to reach the server before the
    # break (the sidecar is only written at the break, so there is nothing to poll for them)
    time.sleep(0.5)
    future.cancel()

    # Execute: once the server has closed the broken stream, its sidecar says where to go on
    status = wait_for(lambda: (s := a.upload_status(task.task_id)).next_tensor == 2 and s)
    a.push(task.task_id, update, num_examples=4, resume_from=(status.next_tensor, status.next_offset))
    version_id = committed_version(admin, experiment_id, 1)

    # Assert
    assert a.upload_status(task.task_id).complete
    assert_arrays_close(a.fetch(version_id), update)


def test_resume_from_a_status_read_right_after_a_break_completes(cluster: Cluster) -> None:
    # Prepare: the server may not have noticed the break when the client comes back
    admin = cluster.admin()
    a = cluster.worker("a")
    experiment_id, _ = initialize(admin, [a], spec_yaml(rounds=1, min_sites=1))
    task = pull_train(a)
    update = train_update(a, task, np.random.default_rng(4))
    future = push_then_hang(a, task.task_id, update, chunks=2)
    wait_for(lambda: a.upload_status(task.task_id).in_progress)
    future.cancel()

    # Execute: no polling: the status may predate the server noticing the break; the resume waits
    # for the old stream's handler and continues from the client's (possibly earlier) position
    status = a.upload_status(task.task_id)
    resume_from = (status.next_tensor, status.next_offset) if status.in_progress else None
    a.push(task.task_id, update, num_examples=4, resume_from=resume_from)
    version_id = committed_version(admin, experiment_id, 1)

    # Assert
    assert a.upload_status(task.task_id).complete
    assert_arrays_close(a.fetch(version_id), update)


def test_round_fails_at_deadline_with_fewer_than_min_sites(cluster: Cluster) -> None:
    # Prepare
    admin = cluster.admin()
    workers = [cluster.worker(s) for s in ("a", "b")]
    experiment_id, _ = initialize(admin, workers, spec_yaml(rounds=2, min_sites=2, deadline=1.5))
    task = pull_train(workers[0])

    # Execute
    workers[0].push(task.task_id, train_update(workers[0], task, np.random.default_rng(0)), num_examples=3)
    experiment = wait_for(lambda: (e := admin.experiment(experiment_id)).state == "failed" and e, timeout=10)

    # Assert
    (rnd,) = admin.rounds(experiment_id)
    assert rnd.state == "failed" and "deadline passed with 1 update" in rnd.reason
    assert "round 1 failed" in experiment.error


def _run_round(
    workers: list[FakeWorker], rng: np.random.Generator, pushed: list, before_push: Callable[[int], None]
) -> None:  # type: ignore[type-arg]
    tasks = [pull_train(w) for w in workers]
    for index, (worker, task) in enumerate(zip(workers, tasks, strict=True)):
        before_push(index)
        arrays = train_update(worker, task, rng)
        n = int(rng.integers(1, 100))
        worker.push(task.task_id, arrays, num_examples=n)
        pushed.append((arrays, n))


def test_restart_between_rounds_and_mid_collection_loses_and_doubles_nothing(cluster: Cluster) -> None:
    # Prepare
    admin = cluster.admin()
    workers = [cluster.worker(s) for s in ("a", "b", "c")]
    experiment_id, _ = initialize(admin, workers, spec_yaml(rounds=2, min_sites=3))
    rng = np.random.default_rng(11)

    # Execute: round 1, then a restart between rounds
    round1: list = []  # type: ignore[type-arg]
    _run_round(workers, rng, round1, lambda i: None)
    committed_version(admin, experiment_id, 1)
    cluster.restart()
    admin = cluster.admin()
    workers = [cluster.worker(s) for s in ("a", "b", "c")]

    # round 2: two updates in, restart, the third worker re-registers and finishes
    tasks = [pull_train(w) for w in workers]
    round2 = []
    for worker, task in zip(workers[:2], tasks[:2], strict=True):
        arrays = train_update(worker, task, rng)
        worker.push(task.task_id, arrays, num_examples=5 + len(round2))
        round2.append((arrays, 5 + len(round2)))
    cluster.restart()
    admin = cluster.admin()
    c = cluster.worker("c")  # registering again releases the task leased to c's old worker id
    task_c = pull_train(c)
    assert task_c.task_id == tasks[2].task_id
    arrays = train_update(c, task_c, rng)
    c.push(task_c.task_id, arrays, num_examples=40)
    round2.append((arrays, 40))
    version_id = committed_version(admin, experiment_id, 2)

    # Assert
    assert_arrays_close(c.fetch(version_id), weighted_mean(round2))
    assert wait_for(lambda: admin.experiment(experiment_id).state == "completed")
    assert [r.updates_received for r in admin.rounds(experiment_id)] == [3, 3]
