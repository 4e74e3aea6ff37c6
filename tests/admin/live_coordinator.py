"""The real coordinator, driven through `fedtune admin` (CLI) plus scripted fake workers.

Helpers for tests/admin/test_cli_against_coordinator.py: a `Cli` bound to one coordinator (and
admin token) that fails loudly on a non-zero exit, and the worker side of an experiment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedtune.serde import task_from_proto
from fedtune.v1 import worker_pb2
from tests.admin.harness import AdminRun, run_admin
from tests.support.fake_worker import FakeWorker, initial_arrays
from tests.support.flow import pull_train, train_update, weighted_mean
from tests.support.waiting import wait_for

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Cli:
    """`fedtune admin` against one coordinator, with its admin token (or none)."""

    target: str
    token: str | None

    def run(self, *args: str, token: str | None = None, **kwargs: Any) -> AdminRun:
        """Any exit code; `token` overrides the bound one."""
        return run_admin(self.target, *args, token=token or self.token, **kwargs)

    def ok(self, *args: str, **kwargs: Any) -> AdminRun:
        result = self.run(*args, **kwargs)
        assert result.exit_code == 0, f"fedtune admin {' '.join(args)}: {result.exit_code} {result.stderr}"
        return result

    def json(self, *args: str, **kwargs: Any) -> Any:
        return self.ok("--json", *args, **kwargs).json

    def committed_round(self, experiment_id: str, round_number: int, timeout: float = 10.0) -> dict[str, Any]:
        """The round's JSON once `rounds` shows it committed (fails fast on a failed round)."""

        def done() -> dict[str, Any] | None:
            for rnd in self.json("rounds", experiment_id)["rounds"]:
                if rnd["round"] == round_number:
                    assert rnd["state"] != "failed", f"round {round_number} failed: {rnd['reason']}"
                    if rnd["state"] == "committed":
                        return dict(rnd)
            return None

        found = wait_for(done, timeout=timeout)
        assert found is not None
        return found


def do_init(workers: Sequence[FakeWorker]) -> Arrays:
    """Whichever worker gets the INIT task pushes version 0 (with adapter_config.json)."""

    def init_task() -> tuple[FakeWorker, worker_pb2.Task] | None:
        for worker in workers:
            task = worker.pull(wait_seconds=0.2)
            if task is not None:
                return worker, task
        return None

    pulled = wait_for(init_task)
    assert pulled is not None
    worker, task = pulled
    assert task_from_proto(task).kind == "init"
    worker.do_init(task)
    return initial_arrays()


@dataclass
class RoundPlan:
    """One round's tasks as pulled; `push()` sends the updates and returns the expected mean."""

    workers: Sequence[FakeWorker]
    tasks: list[worker_pb2.Task]
    rng: np.random.Generator

    @classmethod
    def pull(cls, workers: Sequence[FakeWorker], round_number: int, rng: np.random.Generator) -> RoundPlan:
        tasks = [pull_train(worker) for worker in workers]
        assert [t.round for t in tasks] == [round_number] * len(workers)
        return cls(workers, tasks, rng)

    def push(self) -> tuple[Arrays, int, dict[str, float]]:
        """(expected weighted mean, total examples, expected weighted metrics)."""
        pushed: list[tuple[Arrays, int]] = []
        loss_sum = 0.0
        for worker, task in zip(self.workers, self.tasks, strict=True):
            arrays = train_update(worker, task, self.rng)
            num_examples = int(self.rng.integers(1, 500))
            loss = float(self.rng.uniform(0.5, 2.0))
            worker.push(task.task_id, arrays, num_examples=num_examples, metrics={"loss": loss})
            pushed.append((arrays, num_examples))
            loss_sum += loss * num_examples
        total = sum(n for _, n in pushed)
        return weighted_mean(pushed), total, {"loss": loss_sum / total}
