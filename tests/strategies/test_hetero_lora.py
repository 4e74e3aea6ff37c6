"""Heterogeneous LoRA ranks (docs/decisions.md 37): stacking and FlexLoRA against a numpy reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator.strategies import build_strategy
from coordinator.strategies.base import RoundInputs, UpdateInfo
from coordinator.strategies.lora_math import (
    A_ROW_NORM,
    exact_product,
    refactor_product,
    refactor_stacked,
    stacked_factors,
    truncation_error,
)
from fedtune.lora_ranks import pad_to_shapes
from fedtune.tensorstream.safetensors_file import read_header
from tests.strategies.helpers import RoundFiles, read_float64, run_round, write_tensors

D, K, R = 14, 10, 6
A_NAME = "base_model.model.layer.0.query.lora_A.weight"
B_NAME = "base_model.model.layer.0.query.lora_B.weight"
HEAD = "base_model.model.classifier.weight"
LAYOUT: dict[str, tuple[str, tuple[int, ...]]] = {
    A_NAME: ("float32", (R, K)),
    B_NAME: ("float32", (D, R)),
    HEAD: ("float32", (3, 4)),
}


def padded_sites(rng: np.random.Generator, ranks: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each site's (B, A) of its own rank, zero-padded to the global rank R."""
    bs, as_ = [], []
    for rank in ranks:
        small = {A_NAME: rng.standard_normal((rank, K)), B_NAME: rng.standard_normal((D, rank))}
        padded = pad_to_shapes(small, {A_NAME: (R, K), B_NAME: (D, R)})
        bs.append(padded[B_NAME])
        as_.append(padded[A_NAME])
    return bs, as_


def assert_live_rows(a: np.ndarray) -> None:
    """A's rows are orthogonal and none is shorter than a fresh LoRA's (so every component can train)."""
    gram = a @ a.T
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-10)
    assert np.diag(gram).min() >= A_ROW_NORM**2 - 1e-10


def truncated(delta: np.ndarray, rank: int) -> np.ndarray:
    u, s, vt = np.linalg.svd(delta, full_matrices=False)
    return np.asarray((u[:, :rank] * s[:rank]) @ vt[:rank])


def test_stacking_reproduces_the_weighted_sum_of_products_exactly_at_the_summed_rank() -> None:
    rng = np.random.default_rng(70)
    ranks = [2, 4, 6]
    bs, as_ = padded_sites(rng, ranks)
    p = [0.2, 0.3, 0.5]

    b_stack, a_stack = stacked_factors(bs, as_, p)

    assert b_stack.shape == (D, sum(ranks)) and a_stack.shape == (sum(ranks), K)  # padding dropped
    want = sum(pi * b @ a for pi, b, a in zip(p, bs, as_, strict=True))
    np.testing.assert_allclose(b_stack @ a_stack, want, rtol=1e-13, atol=1e-13)


def test_flexlora_refactor_is_the_numpy_truncated_svd_of_the_mean_update() -> None:
    rng = np.random.default_rng(71)
    bs, as_ = padded_sites(rng, [3, 6, 6, 2])
    p = [0.1, 0.4, 0.3, 0.2]
    delta = exact_product(bs, as_, p)

    b, a, s = refactor_product(delta, R)

    np.testing.assert_allclose(b @ a, truncated(delta, R), rtol=1e-10, atol=1e-10)
    assert_live_rows(a)  # no component is stuck at A = 0
    np.testing.assert_allclose(s, np.linalg.svd(delta, compute_uv=False), rtol=1e-12)
    lost = np.linalg.norm(delta - truncated(delta, R)) / np.linalg.norm(delta)
    assert truncation_error(s, R) == pytest.approx(lost, rel=1e-9)
    assert lost > 0.01  # 17 stacked components into 6: something is lost


def test_the_stacked_route_gives_the_same_adapter_product_as_the_dense_svd() -> None:
    rng = np.random.default_rng(72)
    bs, as_ = padded_sites(rng, [1, 4, 6, 5])
    p = [0.25, 0.25, 0.3, 0.2]

    b, a, s = refactor_stacked(*stacked_factors(bs, as_, p), R)

    delta = exact_product(bs, as_, p)
    np.testing.assert_allclose(b @ a, truncated(delta, R), rtol=1e-10, atol=1e-10)
    assert_live_rows(a)
    assert truncation_error(s, R) == pytest.approx(
        truncation_error(np.linalg.svd(delta, compute_uv=False), R)
    )


def test_a_mean_of_lower_rank_than_r_keeps_full_rank_orthonormal_a_rows() -> None:
    rng = np.random.default_rng(73)
    bs, as_ = padded_sites(rng, [2])  # one site of rank 2: the stack has 2 components, r is 6

    for b, a, _ in (
        refactor_stacked(*stacked_factors(bs, as_, [1.0]), R),
        refactor_product(bs[0] @ as_[0], R),
    ):
        np.testing.assert_allclose(b @ a, bs[0] @ as_[0], atol=1e-10)  # exact: nothing to truncate
        assert_live_rows(a)
        assert np.abs(b[:, 2:]).max() < 1e-10  # the spare components start at B = 0, like a fresh LoRA


def make_hetero_round(
    tmp_path: Path, ranks: list[int], seed: int
) -> tuple[RoundFiles, np.ndarray, np.ndarray]:
    """A round on disk whose sites have `ranks`; returns it, the exact mean update and the head's mean."""
    rng = np.random.default_rng(seed)
    global_path = tmp_path / "global.safetensors"
    write_tensors(global_path, {n: rng.standard_normal(shape) for n, (_, shape) in LAYOUT.items()}, LAYOUT)
    manifest, _ = read_header(global_path)
    bs, as_ = padded_sites(rng, ranks)
    updates, heads = [], []
    for i, (b, a) in enumerate(zip(bs, as_, strict=True)):
        path = tmp_path / f"update-{i}.safetensors"
        heads.append(rng.standard_normal((3, 4)))
        write_tensors(path, {A_NAME: a, B_NAME: b, HEAD: heads[-1]}, LAYOUT)
        updates.append(UpdateInfo(path, num_examples=10 * (i + 1), metrics={}, site=f"site-{i}"))
    weights = np.array([u.num_examples for u in updates], dtype=np.float64)
    p = list(weights / weights.sum())
    f32 = [read_float64(u.path) for u in updates]  # the factors as the files hold them (float32)
    delta = exact_product([f[B_NAME] for f in f32], [f[A_NAME] for f in f32], p)
    head = sum(pi * h for pi, h in zip(p, (f[HEAD] for f in f32), strict=True))
    inputs = RoundInputs(tmp_path / "work", manifest, global_path, None, {}, 1)
    inputs.workdir.mkdir()
    return RoundFiles(inputs, updates), delta, np.asarray(head)


@pytest.mark.parametrize("method", ["stack", "svd"])
def test_a_round_writes_the_truncated_svd_of_the_exact_mean_and_averages_the_rest(
    method: str, tmp_path: Path
) -> None:
    files, delta, head = make_hetero_round(tmp_path, [2, 4, 6], seed=74)

    result = run_round(build_strategy("hetero_lora", {"method": method}), files)

    new = read_float64(result.new_tensors_path)
    scale = np.abs(delta).max()
    np.testing.assert_allclose(new[B_NAME] @ new[A_NAME], truncated(delta, R), atol=1e-5 * scale)
    np.testing.assert_allclose(new[HEAD], head, atol=1e-6)
    lost = np.linalg.norm(delta - truncated(delta, R)) / np.linalg.norm(delta)
    assert result.metrics["truncation_error_max"] == pytest.approx(lost, rel=1e-6)


def test_sites_whose_ranks_sum_to_r_are_aggregated_exactly(tmp_path: Path) -> None:
    files, delta, _ = make_hetero_round(tmp_path, [2, 4], seed=75)  # 2 + 4 = R: the stack fits

    result = run_round(build_strategy("hetero_lora", {"method": "stack"}), files)

    new = read_float64(result.new_tensors_path)
    np.testing.assert_allclose(new[B_NAME] @ new[A_NAME], delta, atol=1e-5 * np.abs(delta).max())
    assert result.metrics["truncation_error_max"] < 1e-6
    assert result.metrics["stacked_rank_max"] == 6.0


def test_both_methods_agree_and_refolding_in_another_order_gives_the_same_bytes(tmp_path: Path) -> None:
    files, _, _ = make_hetero_round(tmp_path, [3, 6, 1, 5], seed=76)
    stack = build_strategy("hetero_lora", {"method": "stack"})
    first = run_round(stack, files).new_tensors_path.read_bytes()
    files.updates.reverse()  # a restarted coordinator re-folds the spool in another order

    again_path = run_round(stack, files).new_tensors_path
    again, stacked = again_path.read_bytes(), read_float64(again_path)
    dense = read_float64(run_round(build_strategy("hetero_lora", {"method": "svd"}), files).new_tensors_path)

    assert again == first
    np.testing.assert_allclose(
        dense[B_NAME] @ dense[A_NAME], stacked[B_NAME] @ stacked[A_NAME], rtol=1e-5, atol=1e-5
    )
