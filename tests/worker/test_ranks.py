"""The sharding of a multi-process train task (worker/ranks.py) and the files between daemon and ranks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedtune.errors import ErrorCode, FedtuneError
from worker import rank_job
from worker.launcher import _collect
from worker.ranks import RankGroup, from_env
from worker.task_io import TaskOutput
from worker.training import _batch_order, data_rng


@pytest.mark.parametrize(("step_size", "world_size"), [(8, 2), (7, 2), (6, 4), (1, 2), (12, 3)])
def test_shards_of_a_step_partition_it_in_order(step_size: int, world_size: int) -> None:
    # Prepare: one seeded step, as every rank draws it
    steps = list(_batch_order(50, step_size, 3, data_rng(0, 1, "site-a")))
    for indices in steps:
        # Execute
        shards = [RankGroup(rank, world_size).shard(indices) for rank in range(world_size)]
        # Assert: disjoint, together the step, each in the step's order, sizes within one
        joined = np.concatenate(shards)
        assert sorted(joined.tolist()) == sorted(indices.tolist()) and len(joined) == len(indices)
        for shard in shards:
            positions = [indices.tolist().index(i) for i in shard]
            assert positions == sorted(positions)
        sizes = [len(s) for s in shards]
        assert max(sizes) - min(sizes) <= 1


def test_every_rank_draws_the_same_step_order() -> None:
    # Prepare / Execute: two ranks each draw the site's order from the same seed
    first = list(_batch_order(30, 6, 10, data_rng(3, 2, "site-b")))
    second = list(_batch_order(30, 6, 10, data_rng(3, 2, "site-b")))
    # Assert: a rank's shard of step s is a part of the step a single process trains on
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_a_group_of_one_is_not_distributed_and_keeps_every_example() -> None:
    group = RankGroup(0, 1)
    indices = np.arange(5)
    assert not group.distributed and group.is_main
    assert np.array_equal(group.shard(indices), indices)
    assert group.sum(2.5, device=__import__("torch").device("cpu")) == 2.5


def test_torchrun_environment_gives_the_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert from_env() == RankGroup(rank=3, world_size=4, local_rank=1)


# ----------------------------------------------------------------------------- the daemon's verdict
def test_rank_zeros_update_round_trips_through_the_job_folder(tmp_path: Path) -> None:
    output = TaskOutput({"a": np.arange(6, dtype=np.float32).reshape(2, 3)}, 48, {"train_loss": 1.5})
    rank_job.write_output(tmp_path, output)
    back = _collect(tmp_path, 0, 2)
    assert back.num_examples == 48 and back.metrics == {"train_loss": 1.5}
    np.testing.assert_array_equal(back.arrays["a"], output.arrays["a"])


def test_a_ranks_own_error_is_reported_with_its_rank(tmp_path: Path) -> None:
    rank_job.write_error(
        tmp_path, 1, FedtuneError(ErrorCode.NON_FINITE, "training loss became nan at step 3")
    )
    with pytest.raises(FedtuneError) as raised:
        _collect(tmp_path, 1, 2)
    assert raised.value.code is ErrorCode.NON_FINITE
    assert "training process 1 of 2: training loss became nan" in raised.value.message


def test_a_foreign_error_is_reported_by_type_only(tmp_path: Path) -> None:
    rank_job.write_error(tmp_path, 0, KeyError("a label from the site's data"))
    with pytest.raises(FedtuneError) as raised:
        _collect(tmp_path, 1, 2)
    assert "KeyError" in raised.value.message and "site's data" not in raised.value.message


def test_a_killed_rank_is_named_with_its_signal(tmp_path: Path) -> None:
    rank_job.mark_started(tmp_path, 0)
    rank_job.write_failures(tmp_path, {1: "signal SIGKILL"})
    with pytest.raises(FedtuneError, match="process 1 ended with signal SIGKILL"):
        _collect(tmp_path, 1, 2)


def test_no_update_and_no_report_still_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(FedtuneError, match="exited with code 1 .0 of 2 had started"):
        _collect(tmp_path, 1, 2)


def test_a_killed_rank_is_named_before_the_errors_it_caused_in_its_peers(tmp_path: Path) -> None:
    rank_job.write_error(tmp_path, 0, RuntimeError("Connection reset by peer"))
    rank_job.write_failures(tmp_path, {0: "exit code 1", 1: "signal SIGKILL"})
    with pytest.raises(FedtuneError, match="process 1 ended with signal SIGKILL") as raised:
        _collect(tmp_path, 1, 2)
    assert "process 0" not in raised.value.message


def test_more_processes_than_gpus_is_refused_before_launching(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.launcher import check_processes

    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    with pytest.raises(FedtuneError, match="processes=4 but this machine has 2 CUDA device"):
        check_processes(4, "cuda")
    check_processes(2, "cuda")
    check_processes(8, "cpu")  # CPU processes: any number
