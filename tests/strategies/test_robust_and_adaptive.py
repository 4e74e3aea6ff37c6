"""Coordinate-wise robust strategies and adaptive client weighting against numpy."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from coordinator.strategies import UpdateInfo, build_strategy
from coordinator.strategies.fedavg_adaptive.strategy import REFERENCE_KEY
from fedtune.errors import ErrorCode, FedtuneError
from tests.strategies.helpers import FLOAT32_LAYOUT, make_round, read_float64, run_round, write_tensors


def test_median_is_the_coordinate_wise_median_and_ignores_an_outlier(tmp_path: Path) -> None:
    files = make_round(tmp_path, np.random.default_rng(30), layout=FLOAT32_LAYOUT, sites=4)
    outlier = tmp_path / "outlier.safetensors"
    write_tensors(outlier, {"a": np.full((7, 5), 1e6), "b": np.full(11, -1e6)}, FLOAT32_LAYOUT)
    files.updates.append(UpdateInfo(outlier, 10, {}, "evil"))
    stacked = [read_float64(u.path) for u in files.updates]

    result = read_float64(run_round(build_strategy("median", {}), files).new_tensors_path)

    for key in result:
        expected = np.median(np.stack([s[key] for s in stacked]).astype(np.float32), axis=0)
        np.testing.assert_allclose(result[key], expected, rtol=1e-6)
        assert np.abs(result[key]).max() < 100


@pytest.mark.parametrize("trim_fraction", [0.0, 0.2, 0.4])
def test_trimmed_mean_drops_k_values_at_each_end(trim_fraction: float, tmp_path: Path) -> None:
    files = make_round(tmp_path, np.random.default_rng(31), layout=FLOAT32_LAYOUT, sites=5)
    stacked = [read_float64(u.path) for u in files.updates]

    result = read_float64(
        run_round(build_strategy("trimmed_mean", {"trim_fraction": trim_fraction}), files).new_tensors_path
    )

    k = math.floor(trim_fraction * 5)
    for key in result:
        ordered = np.sort(np.stack([s[key] for s in stacked]), axis=0)
        np.testing.assert_allclose(result[key], ordered[k : 5 - k].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_adaptive_round_one_is_fedavg_and_seeds_the_reference_with_the_median_divergence(
    tmp_path: Path,
) -> None:
    files = make_round(tmp_path, np.random.default_rng(32), layout=FLOAT32_LAYOUT, sites=3)
    g = read_float64(files.inputs.global_path)
    divergences = [
        math.sqrt(sum(((read_float64(u.path)[k] - g[k]) ** 2).sum() for k in g)) for u in files.updates
    ]

    adaptive = run_round(build_strategy("fedavg_adaptive", {}), files)
    plain = run_round(build_strategy("fedavg", {}), files)

    for key in g:
        np.testing.assert_array_equal(
            read_float64(adaptive.new_tensors_path)[key], read_float64(plain.new_tensors_path)[key]
        )
    assert adaptive.state_scalars[REFERENCE_KEY] == pytest.approx(float(np.median(divergences)))


def test_adaptive_downweights_an_update_beyond_outlier_ratio_times_the_reference(tmp_path: Path) -> None:
    files = make_round(
        tmp_path,
        np.random.default_rng(33),
        layout=FLOAT32_LAYOUT,
        sites=2,
        state_scalars={REFERENCE_KEY: 0.5},
    )
    g = read_float64(files.inputs.global_path)
    far = tmp_path / "far.safetensors"
    write_tensors(far, {k: g[k] + 1.0 for k in g}, FLOAT32_LAYOUT)  # divergence sqrt(46) ~ 6.8 > 2 x 0.5
    files.updates.append(UpdateInfo(far, 30, {}, "far"))
    strategy = build_strategy("fedavg_adaptive", {"outlier_ratio": 2.0, "reference_decay": 0.5})

    result = run_round(strategy, files)

    d_far = math.sqrt(sum(((read_float64(far)[k] - g[k]) ** 2).sum() for k in g))
    near_d = [
        math.sqrt(sum(((read_float64(u.path)[k] - g[k]) ** 2).sum() for k in g)) for u in files.updates[:2]
    ]
    weights = [
        u.num_examples * min(1.0, 2.0 * 0.5 / d) for u, d in zip(files.updates, [*near_d, d_far], strict=True)
    ]
    expected = {
        k: sum(w * read_float64(u.path)[k] for u, w in zip(files.updates, weights, strict=True))
        / sum(weights)
        for k in g
    }
    out = read_float64(result.new_tensors_path)
    for key in g:
        np.testing.assert_allclose(out[key], expected[key], rtol=1e-5, atol=1e-6)
    assert result.metrics["factor.far"] == pytest.approx(1.0 / d_far)
    assert result.state_scalars[REFERENCE_KEY] == pytest.approx(
        0.5 * 0.5 + 0.5 * float(np.median([*near_d, d_far]))
    )


def test_adaptive_metric_signal_scales_by_reported_accuracy(tmp_path: Path) -> None:
    files = make_round(tmp_path, np.random.default_rng(34), layout=FLOAT32_LAYOUT, sites=2)
    strategy = build_strategy("fedavg_adaptive", {"signals": ["metric"], "metric_power": 2.0})
    strategy.begin_round(files.inputs)

    weights = [strategy.weight(u, files.inputs) for u in files.updates]

    assert weights == pytest.approx([10 * 0.5**2, 20 * 0.6**2])


def test_adaptive_metric_signal_rejects_a_site_without_the_metric_unless_told_a_value(tmp_path: Path) -> None:
    files = make_round(tmp_path, np.random.default_rng(35), layout=FLOAT32_LAYOUT, sites=1)
    silent = UpdateInfo(files.updates[0].path, 10, {}, "silent")

    with pytest.raises(FedtuneError) as err:
        build_strategy("fedavg_adaptive", {"signals": ["metric"]}).weight(silent, files.inputs)
    lenient = build_strategy("fedavg_adaptive", {"signals": ["metric"], "missing_metric_value": 0.25})

    assert err.value.code is ErrorCode.INVALID_ARGUMENT and "missing_metric_value" in err.value.message
    assert lenient.weight(silent, files.inputs) == pytest.approx(2.5)
