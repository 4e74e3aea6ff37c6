"""Scripted experiment steps shared by the integration tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedtune.serde import task_from_proto
from fedtune.tensorstream.encoder import manifest_for_arrays
from fedtune.v1 import admin_pb2, worker_pb2
from tests.support.cluster import Admin
from tests.support.fake_worker import FakeWorker, initial_arrays, random_like
from tests.support.waiting import wait_for


def submit(admin: Admin, spec: str, start: bool = True) -> str:
    return str(
        admin.SubmitExperiment(admin_pb2.SubmitExperimentRequest(spec_yaml=spec, start=start)).experiment_id
    )


def initialize(admin: Admin, workers: Sequence[FakeWorker], spec: str) -> tuple[str, dict[str, np.ndarray]]:
    """Submit + start, let whichever worker gets the INIT task push version 0."""
    experiment_id = submit(admin, spec)

    def init_task() -> tuple[FakeWorker, worker_pb2.Task] | None:
        for worker in workers:
            task = worker.pull(wait_seconds=0.2)
            if task is not None:
                return worker, task
        return None

    worker, task = wait_for(init_task)
    assert task_from_proto(task).kind == "init"
    worker.do_init(task)
    wait_for(lambda: admin.experiment(experiment_id).latest_model_version_id)
    return experiment_id, initial_arrays()


def pull_train(worker: FakeWorker, timeout: float = 10.0) -> worker_pb2.Task:
    task = wait_for(lambda: worker.pull(wait_seconds=1.0), timeout=timeout)
    assert task_from_proto(task).kind == "train", task
    return task


def train_update(
    worker: FakeWorker, task: worker_pb2.Task, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    manifest = task_from_proto(task).model_manifest
    assert manifest is not None
    return random_like(manifest, rng)


def weighted_mean(updates: Sequence[tuple[dict[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    total = sum(n for _, n in updates)
    names = updates[0][0].keys()
    return {
        name: (sum(arrays[name].astype(np.float64) * n for arrays, n in updates) / total).astype(np.float32)
        for name in names
    }


def committed_version(admin: Admin, experiment_id: str, round_number: int, timeout: float = 10.0) -> str:
    def done() -> str | None:
        for rnd in admin.rounds(experiment_id):
            if rnd.round == round_number and rnd.state == "committed":
                return rnd.model_version_id
            if rnd.round == round_number and rnd.state == "failed":
                raise AssertionError(f"round {round_number} failed: {rnd.reason}")
        return None

    return wait_for(done, timeout=timeout)


def assert_arrays_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want) or sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6, err_msg=name)


__all__ = ["manifest_for_arrays"]
