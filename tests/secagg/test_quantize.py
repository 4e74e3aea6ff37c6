"""Quantization into Z_2^32: unbiased stochastic rounding, the overflow bound, the proven error bound."""

from __future__ import annotations

import numpy as np
import pytest

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.secagg.masking import modular_sum
from fedtune.secagg.quantize import (
    QuantizationParams,
    cap_weight,
    dequantize_sum,
    dequantize_weight_sum,
    mean_error_bound,
    quantize_chunk,
    quantize_weight,
    sum_error_bound,
    weighted_mean,
)


def test_stochastic_rounding_is_unbiased() -> None:
    # Prepare: values that sit between two levels at several fractions
    params = QuantizationParams(clip_range=1.0, max_weight=1.0, max_sites=4)
    fractions = np.array([0.1, 0.25, 0.5, 0.9])
    values = ((np.array([3.0, -7.0, 11.0, -2.0]) + fractions) * params.step).astype(np.float64)
    rng = np.random.default_rng(1)
    draws = 20_000

    # Execute: round the same values many times
    levels = np.stack([quantize_chunk(values, 1.0, params, rng).view(np.int32) for _ in range(draws)])

    # Assert: the mean level equals the exact scaled value (5 sigma of a Bernoulli mean)
    exact = values / params.step
    sigma = np.sqrt(fractions * (1 - fractions) / draws)
    assert np.all(np.abs(levels.mean(axis=0) - exact) < 5 * sigma)
    assert set(np.unique(levels[:, 0])) == {3, 4}  # only the two neighbouring levels


@pytest.mark.parametrize("seed", range(5))
def test_dequantized_sum_is_within_the_proven_error(seed: int) -> None:
    # Prepare: random sites, weights and values, some beyond the clip
    rng = np.random.default_rng(seed)
    sites = int(rng.integers(1, 40))
    params = QuantizationParams(clip_range=2.0, max_weight=500.0, max_sites=sites)
    updates = [rng.normal(scale=1.5, size=300) for _ in range(sites)]
    weights = [float(rng.uniform(1, 500)) for _ in range(sites)]

    # Execute
    summed = modular_sum(quantize_chunk(u, w, params, rng) for u, w in zip(updates, weights, strict=True))
    summed_weight = modular_sum(quantize_weight(w, params, rng) for w in weights)
    weight_sum = dequantize_weight_sum(int(summed_weight[0]), params)

    # Assert: against the float sum of the clipped, weighted values
    exact = sum(w * np.clip(u, -2.0, 2.0) for u, w in zip(updates, weights, strict=True))
    assert np.max(np.abs(dequantize_sum(summed, params) - exact)) <= sum_error_bound(params, sites)
    assert abs(weight_sum - sum(weights)) <= sites * params.weight_step
    mean = weighted_mean(summed, weight_sum, params)
    assert np.max(np.abs(mean - exact / sum(weights))) <= mean_error_bound(params, weight_sum, sites)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_sum_of_n_sites_at_the_clip_does_not_overflow(sign: float) -> None:
    # Prepare: every site at the extreme: value at (beyond) the clip, weight at the maximum
    sites = 1000
    params = QuantizationParams(clip_range=8.0, max_weight=1e6, max_sites=sites)
    rng = np.random.default_rng(0)
    extreme = np.full(4, sign * 1e9)

    # Execute
    summed = modular_sum(quantize_chunk(extreme, 1e6, params, rng) for _ in range(sites))

    # Assert: the int32 view is the exact sum n*L (no wrap), and dequantizes to n*W*c
    assert np.all(summed.view(np.int32) == int(sign) * sites * params.levels)
    assert np.allclose(dequantize_sum(summed, params), sign * sites * 1e6 * 8.0)
    assert sites * params.levels < 2**31


def test_non_finite_values_are_refused() -> None:
    params = QuantizationParams(clip_range=1.0, max_weight=1.0, max_sites=3)
    with pytest.raises(FedtuneError) as err:
        quantize_chunk(np.array([0.0, np.nan]), 1.0, params, np.random.default_rng())
    assert err.value.code is ErrorCode.NON_FINITE


@pytest.mark.parametrize("weight", [0.0, -1.0, 11.0, float("inf")])
def test_a_weight_outside_0_max_weight_is_refused(weight: float) -> None:
    params = QuantizationParams(clip_range=1.0, max_weight=10.0, max_sites=3)
    with pytest.raises(FedtuneError, match="max_weight"):
        quantize_weight(weight, params, np.random.default_rng())


@pytest.mark.parametrize(
    ("clip_range", "max_weight", "max_sites"),
    [(0.0, 1.0, 3), (1.0, 0.0, 3), (1.0, 1.0, 0), (1.0, 1.0, 200_000)],
)
def test_bad_quantization_params_are_refused(clip_range: float, max_weight: float, max_sites: int) -> None:
    with pytest.raises(FedtuneError):
        QuantizationParams(clip_range=clip_range, max_weight=max_weight, max_sites=max_sites)


def test_weights_above_max_weight_are_capped_for_the_protocol() -> None:
    params = QuantizationParams(clip_range=1.0, max_weight=500.0, max_sites=3)
    assert cap_weight(10_000.0, params) == 500.0
    assert cap_weight(20.0, params) == 20.0
