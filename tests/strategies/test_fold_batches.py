"""Folds are added to the float64 sum in batches (decision 41): the new version is the same, bit for bit,
as one pass per update, a refused update is refused at its own fold, and the digests the commit uses
without reading the file again are the file's."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from coordinator.strategies import build_strategy, weighted_mean
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.safetensors_file import data_digest
from tests.strategies.helpers import FLOAT32_LAYOUT, MIXED_LAYOUT, make_round, run_round, write_tensors


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam"])
def test_batched_folds_write_the_same_bytes_as_one_pass_per_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strategy: str
) -> None:
    # Prepare: 7 updates (a batch of 4, then 3 left for finish_round), in small mapped pieces
    files = make_round(tmp_path, np.random.default_rng(41), layout=MIXED_LAYOUT, sites=7)
    monkeypatch.setattr(weighted_mean, "BATCH_ELEMENTS", 5)
    outputs = []

    # Execute
    for batch in (1, 4, 7):
        monkeypatch.setattr(weighted_mean, "FOLD_BATCH", batch)
        result = run_round(build_strategy(strategy, {}), files)
        outputs.append(result.new_tensors_path.read_bytes())

    # Assert
    assert outputs[0] == outputs[1] == outputs[2]


def test_a_non_finite_update_is_refused_by_its_own_fold_while_others_wait_in_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    monkeypatch.setattr(weighted_mean, "FOLD_BATCH", 4)
    files = make_round(tmp_path, np.random.default_rng(5), layout=FLOAT32_LAYOUT, sites=2)
    bad = tmp_path / "inf.safetensors"
    write_tensors(bad, {"a": np.full((7, 5), np.inf), "b": np.zeros(11)}, FLOAT32_LAYOUT)
    strategy = build_strategy("fedavg", {})
    strategy.begin_round(files.inputs)
    for update in files.updates:
        strategy.fold(update, 1.0)

    # Execute / Assert
    with pytest.raises(FedtuneError) as err:
        strategy.fold(type(files.updates[0])(bad, 5, {}, "evil"), 5.0)
    assert err.value.code is ErrorCode.NON_FINITE


def test_the_result_carries_the_digests_of_the_file_it_wrote(tmp_path: Path) -> None:
    # Prepare
    files = make_round(tmp_path, np.random.default_rng(6), layout=MIXED_LAYOUT, sites=3)

    # Execute
    result = run_round(build_strategy("fedavgm", {}), files)

    # Assert
    assert result.new_tensors_digests is not None
    assert result.new_tensors_digests.file == hashlib.sha256(result.new_tensors_path.read_bytes()).hexdigest()
    assert result.new_tensors_digests.data == data_digest(result.new_tensors_path)
