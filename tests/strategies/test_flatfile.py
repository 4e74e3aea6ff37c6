"""FlatFile.add through mapped windows: the same float64 sums as read + add + write, at any offset and
window size, with only a window of the file mapped at a time (decision 41)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator.strategies import flatfile
from coordinator.strategies.flatfile import FlatFile


@pytest.mark.parametrize("window_bytes", [8, 4096, 40_000, 32 << 20])
def test_add_equals_the_reference_weighted_sum_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window_bytes: int
) -> None:
    # Prepare
    monkeypatch.setattr(flatfile, "WINDOW_BYTES", window_bytes)
    monkeypatch.setattr(flatfile, "BLOCK_ELEMENTS", 1000)
    rng = np.random.default_rng(7)
    numel = 25_003
    reference = np.zeros(numel)
    accumulator = FlatFile(tmp_path / "sum.f64", numel).create()

    # Execute
    for start, count, weight in [(0, numel, 1.0), (0, numel, 37.0), (513, 9_000, 0.1), (24_000, 1_003, 3.5)]:
        values = rng.standard_normal(count).astype(np.float32)
        accumulator.add(start, values, weight)
        reference[start : start + count] += np.multiply(values, weight, dtype=np.float64)
    found = accumulator.read(0, numel)
    accumulator.close()

    # Assert
    assert np.array_equal(found, reference)


def test_add_into_a_float32_file_rounds_in_float32(tmp_path: Path) -> None:
    # Prepare
    values = np.random.default_rng(1).standard_normal(3000)
    state = FlatFile(tmp_path / "state.f32", 3000, np.float32).create()

    # Execute
    state.add(0, values, 0.5)

    # Assert
    assert np.array_equal(state.read(0, 3000), np.multiply(values, 0.5, dtype=np.float32))


def test_add_outside_the_file_is_an_index_error_and_changes_nothing(tmp_path: Path) -> None:
    # Prepare
    accumulator = FlatFile(tmp_path / "sum.f64", 10).create()

    # Execute / Assert
    with pytest.raises(IndexError, match="outside"):
        accumulator.add(5, np.ones(6, dtype=np.float32))
    assert not accumulator.read(0, 10).any()


def test_create_reserves_the_blocks_so_a_full_disk_fails_there(tmp_path: Path) -> None:
    # Execute
    accumulator = FlatFile(tmp_path / "sum.f64", 1 << 20).create()

    # Assert: the blocks are allocated (posix_fallocate), not a sparse file mapped pages could overrun
    assert (tmp_path / "sum.f64").stat().st_blocks * 512 >= (1 << 20) * 8
    accumulator.close()


def test_add_many_rounds_term_after_term_like_one_add_per_term(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: terms whose float64 sums depend on the order and grouping of the additions
    monkeypatch.setattr(flatfile, "WINDOW_BYTES", 4096)
    monkeypatch.setattr(flatfile, "BLOCK_ELEMENTS", 100)
    rng = np.random.default_rng(3)
    numel = 5_000
    terms = [
        (rng.standard_normal(numel).astype(np.float32) * 10.0**e, w)
        for e, w in [(0, 3.0), (6, 0.7), (-6, 1.0)]
    ]
    batched = FlatFile(tmp_path / "batched.f64", numel).create()
    one_by_one = FlatFile(tmp_path / "one.f64", numel).create()
    products = [np.multiply(v, w, dtype=np.float64) for v, w in terms]
    grouped = products[0] + (products[1] + products[2])  # another grouping of the same sum

    # Execute
    batched.add_many(7, [(v[7:], w) for v, w in terms])
    for values, weight in terms:
        one_by_one.add(7, values[7:], weight)

    # Assert
    assert np.array_equal(batched.read(0, numel), one_by_one.read(0, numel))
    assert not np.array_equal(batched.read(7, numel - 7), grouped[7:])  # the test can tell groupings apart
