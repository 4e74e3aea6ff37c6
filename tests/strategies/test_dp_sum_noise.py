"""Site-level DP in the weighted-mean family (decision 36): uniform weights, and Gaussian noise of the
requested standard deviation on the sum of the updates (so sum_noise_std / n on the mean)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from coordinator.strategies.registry import build_strategy
from tests.strategies.helpers import make_round, read_float64, run_round

BIG = {"w": ("float32", (200_000,))}


def _uniform_mean(files) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.mean([read_float64(u.path)["w"] for u in files.updates], axis=0)


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedadam"])
def test_uniform_weights_replace_example_counts(tmp_path: Path, name: str) -> None:
    files = make_round(tmp_path, np.random.default_rng(0), layout=BIG)
    files.inputs = dataclasses.replace(files.inputs, uniform_weights=True)
    strategy = build_strategy(name)
    assert [strategy.weight(u, files.inputs) for u in files.updates] == [1.0, 1.0, 1.0]
    assert [u.num_examples for u in files.updates] == [10, 20, 30]


def test_without_noise_the_uniform_mean_is_exact(tmp_path: Path) -> None:
    files = make_round(tmp_path, np.random.default_rng(1), layout=BIG)
    files.inputs = dataclasses.replace(files.inputs, uniform_weights=True)
    result = run_round(build_strategy("fedavg"), files)
    new = read_float64(result.new_tensors_path)["w"]
    np.testing.assert_allclose(new, _uniform_mean(files), atol=1e-6)
    assert "sum_noise_std" not in result.metrics


@pytest.mark.parametrize("sites", [3, 10])
def test_noise_on_the_sum_has_the_requested_standard_deviation(tmp_path: Path, sites: int) -> None:
    # Prepare
    files = make_round(tmp_path, np.random.default_rng(2), layout=BIG, sites=sites)
    sigma = 0.8
    files.inputs = dataclasses.replace(files.inputs, uniform_weights=True, sum_noise_std=sigma)

    # Execute
    result = run_round(build_strategy("fedavg"), files)

    # Assert: new - uniform mean ~ N(0, (sigma / n)^2) on 200k elements (the std estimate is within 0.2%
    # at one standard error; the bounds are several of them)
    residual = read_float64(result.new_tensors_path)["w"] - _uniform_mean(files)
    assert float(residual.std()) == pytest.approx(sigma / sites, rel=0.02)
    assert abs(float(residual.mean())) < 5 * sigma / sites / np.sqrt(residual.size)
    assert result.metrics["sum_noise_std"] == sigma and result.metrics["total_weight"] == sites


def test_two_commits_of_the_same_round_draw_different_noise(tmp_path: Path) -> None:
    files = make_round(tmp_path, np.random.default_rng(3), layout={"w": ("float32", (64,))})
    files.inputs = dataclasses.replace(files.inputs, uniform_weights=True, sum_noise_std=1.0)
    first = read_float64(run_round(build_strategy("fedavg"), files).new_tensors_path)["w"]
    second = read_float64(run_round(build_strategy("fedavg"), files).new_tensors_path)["w"]
    assert not np.allclose(first, second)  # OS entropy, not a seed an observer could know
