"""A stopping worker leaves training and evaluation within one step or batch (worker/interrupt.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.tiny import tiny_spec
from tests.worker.helpers import write_global
from worker.interrupt import TaskAbandoned, check, interruptible
from worker.tasks import run_init, run_train

pytestmark = pytest.mark.slow


def test_check_is_a_no_op_outside_a_task_and_raises_inside_a_stopping_one() -> None:
    check()
    stop = threading.Event()
    with interruptible(stop.is_set):
        check()
        stop.set()
        with pytest.raises(TaskAbandoned):
            check()
    check()


def test_a_long_training_task_stops_between_two_steps(
    model_root: Path, cls_data: Path, tmp_path: Path
) -> None:
    # Prepare: 100,000 steps, and progress reports that never stop anything (only every 10 steps anyway)
    spec = tiny_spec(
        training={"max_steps": 100_000, "batch_size": 8, "learning_rate": 1e-2, "max_length": 32}
    )
    init = run_init(spec, model_root)
    global_path = write_global(tmp_path / "global.safetensors", init.arrays)
    stop = threading.Event()
    steps: list[str] = []

    def progress(message: str) -> None:
        steps.append(message)
        assert len(steps) <= 2, "training went on after the stop"
        if len(steps) == 2:
            stop.set()  # as SIGTERM would, between two progress reports

    # Execute
    started = time.monotonic()
    with interruptible(stop.is_set), pytest.raises(TaskAbandoned):
        run_train(spec, 0, 1, global_path, cls_data, model_root, site="a", progress=progress)
    # Assert: it left on the very next step, not at the next report nor after the task
    assert len(steps) == 2 and time.monotonic() - started < 60
    assert np.isfinite(init.arrays[next(iter(init.arrays))]).all()
