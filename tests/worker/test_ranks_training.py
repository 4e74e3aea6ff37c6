"""A train task on two gloo processes (torchrun + DDP) equals the same task in one process.

The ranks are real `python -m worker.torchrun` / `worker.rank_main` processes on this CPU; the models
(Llama, no dropout) make the two runs comparable up to float summation order.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedtune.errors import FedtuneError
from fedtune.spec import ExperimentSpec
from tests.fixtures.tiny import instruction_spec, tiny_spec
from tests.support.processes import processes_naming
from tests.support.waiting import wait_for
from tests.worker.helpers import quiet, write_global
from worker.interrupt import TaskAbandoned, interruptible
from worker.launcher import train_on_ranks
from worker.rank_job import RankJob
from worker.task_io import TaskOutput
from worker.tasks import run_init, run_train

pytestmark = pytest.mark.slow
NO_EVAL = {"train": "train.jsonl", "eval": None}


def _job(spec: ExperimentSpec, global_path: Path, data_root: Path, model_root: Path) -> RankJob:
    return RankJob(
        spec_json=spec.to_json(),
        stage_index=0,
        round=1,
        global_path=global_path,
        data_root=data_root,
        model_root=model_root,
        site="site-a",
        device="cpu",
    )


def _one_and_two(
    spec: ExperimentSpec, data_root: Path, model_root: Path, tmp_path: Path
) -> tuple[TaskOutput, TaskOutput]:
    global_path = write_global(tmp_path / "global.safetensors", run_init(spec, model_root).arrays)
    one = run_train(
        spec, 0, 1, global_path, data_root, model_root, site="site-a", progress=quiet, device="cpu"
    )
    two = train_on_ranks(_job(spec, global_path, data_root, model_root), 2, tmp_path / "ranks", quiet)
    return one, two


def _assert_same_update(one: TaskOutput, two: TaskOutput) -> None:
    assert one.arrays.keys() == two.arrays.keys()
    for name in one.arrays:
        np.testing.assert_allclose(two.arrays[name], one.arrays[name], rtol=1e-4, atol=1e-6)
    assert two.metrics["train_loss"] == pytest.approx(one.metrics["train_loss"], rel=1e-5)
    assert two.num_examples == one.num_examples
    assert two.metrics["train_steps"] == one.metrics["train_steps"]
    assert two.metrics["training_processes"] == 2.0 and "training_processes" not in one.metrics


def test_two_processes_equal_one_for_instruction_tuning_with_fedprox_accumulation_schedule_checkpointing(
    model_root: Path, chat_data: Path, tmp_path: Path
) -> None:
    # Prepare: steps of 2 x 3 micro-batches (3 examples a rank: one full and one half micro-batch),
    # token-normalised loss, FedProx, a cosine schedule, clipping, gradient checkpointing
    training: dict[str, Any] = {
        "max_steps": 3,
        "batch_size": 2,
        "gradient_accumulation_steps": 3,
        "learning_rate": 1e-2,
        "max_length": 48,
        "proximal_mu": 0.5,
        "lr_schedule": "cosine",
        "warmup_ratio": 0.2,
        "max_grad_norm": 1.0,
        "gradient_checkpointing": True,
    }
    spec = instruction_spec(data=NO_EVAL, training=training)
    # Execute
    one, two = _one_and_two(spec, chat_data, model_root, tmp_path)
    # Assert
    _assert_same_update(one, two)


@pytest.mark.parametrize(("batch_size", "logit_adjustment"), [(3, 0.0), (1, 1.0)])
def test_two_processes_equal_one_for_classification_with_uneven_and_empty_shards(
    model_root: Path, cls_data: Path, tmp_path: Path, batch_size: int, logit_adjustment: float
) -> None:
    # Prepare: 3 examples a step (shards of 2 and 1); 1 (rank 1 trains a weightless micro-batch) with
    # the logit-adjusted loss
    training = {"max_steps": 3, "batch_size": batch_size, "learning_rate": 1e-2, "max_length": 32}
    spec = tiny_spec(
        base_model={"name": "tiny-llama"},
        data={**NO_EVAL, "eval": "eval.jsonl"},
        training={**training, "logit_adjustment": logit_adjustment},
    )
    # Execute
    one, two = _one_and_two(spec, cls_data, model_root, tmp_path)
    # Assert: the same update, and rank 0 evaluated it
    _assert_same_update(one, two)
    assert two.metrics["eval_accuracy"] == pytest.approx(one.metrics["eval_accuracy"])


def _long_job(model_root: Path, cls_data: Path, tmp_path: Path) -> RankJob:
    spec = tiny_spec(base_model={"name": "tiny-llama"}, data=NO_EVAL, training={"max_steps": 100000})
    global_path = write_global(tmp_path / "global.safetensors", run_init(spec, model_root).arrays)
    return _job(spec, global_path, cls_data, model_root)


def test_a_stopping_worker_ends_every_training_process_within_seconds(
    model_root: Path, cls_data: Path, tmp_path: Path
) -> None:
    # Prepare: a long task; the worker "receives SIGTERM" once rank 0 reports progress
    job, work_dir = _long_job(model_root, cls_data, tmp_path), tmp_path / "ranks"
    training = threading.Event()

    def progress(text: str) -> None:
        training.set()

    # Execute
    with pytest.raises(TaskAbandoned), interruptible(training.is_set):
        train_on_ranks(job, 2, work_dir, progress)
    stopped = time.monotonic()
    # Assert: no torchrun nor rank left, within seconds
    wait_for(lambda: not processes_naming(work_dir), 10, "the training processes to end")
    assert time.monotonic() - stopped < 10


def test_a_killed_rank_fails_the_task_naming_the_rank_and_signal(
    model_root: Path, cls_data: Path, tmp_path: Path
) -> None:
    # Prepare: kill rank 1 (as the out-of-memory killer would) once both ranks train
    job, work_dir = _long_job(model_root, cls_data, tmp_path), tmp_path / "ranks"

    def kill_rank_one(text: str) -> None:
        (started,) = work_dir.glob("ranks-*/rank-1.started")
        os.kill(int(started.read_text()), signal.SIGKILL)

    # Execute
    with pytest.raises(FedtuneError) as raised:
        train_on_ranks(job, 2, work_dir, kill_rank_one)
    # Assert
    assert "process 1 ended with signal SIGKILL" in raised.value.message, raised.value.message
    wait_for(lambda: not processes_naming(work_dir), 10, "the other training processes to end")
    assert not list(work_dir.iterdir())  # the job folder is gone too
