"""Clip, scale and stochastically round float updates into Z_2^32, and the way back.

Encoding (every site of a round uses the same public ``QuantizationParams``)::

    y   = w * clip(x, -c, c)          the site's weighted contribution, |y| <= W*c
    q   = SR(y / step)                stochastic rounding to an integer in [-L, L]
    q_w = SR(w / weight_step)         the weight itself, one more element, in [0, L]

stored as ``q mod 2^32`` (uint32, two's complement). ``c`` is ``clip_range``, ``W`` is ``max_weight``
(a site's weight, e.g. its example count, must be in (0, W]), ``step = W*c/L`` and
``weight_step = W/L``.

Overflow bound. With at most ``n = max_sites`` contributors, ``L = floor((2^31 - 1) / n) - 1``, so
``n * L <= 2^31 - 1 - n``: the true integer sum of any subset of sites lies strictly inside
[-2^31, 2^31), and reading the modular sum as int32 recovers it exactly. No masking or fold step can
overflow, because all of them are modular and cancel exactly.

Error bound. Stochastic rounding moves each value by less than one step, unbiased. For a sum over
``m <= n`` sites, the dequantized weighted sum is within ``m * step`` of ``sum(w_i * clip(x_i))`` per
element and the dequantized weight sum within ``m * weight_step`` of ``sum(w_i)``; ``mean_error_bound``
turns that into a bound on the weighted mean. Precision is best when weights are near ``W``: with
``n = 32``, ``c = 8`` and all weights equal to ``W``, the mean is exact to ~2.4e-7 per element; if
weights are typically ``W / r``, the error grows r-fold, so ``max_weight`` should be near the largest
real weight, and weights above it are capped (``cap_weight``) rather than refused by the protocol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fedtune.errors import ErrorCode, FedtuneError

MODULUS_BITS = 32  # Z_2^32; uint32 arithmetic wraps exactly there
INT32_MAX = 2**31 - 1
MAX_SITES_PER_ROUND = 100_000  # as SelectionSpec.min_sites; leaves L >= 21_473 levels per sign
MAX_CLIP_RANGE = 1e6
MAX_WEIGHT_LIMIT = 1e12


@dataclass(frozen=True)
class QuantizationParams:
    """The public encoding of one round: the same on every site and on the coordinator."""

    clip_range: float  # c: each element is clipped to [-c, c]
    max_weight: float  # W: a site's weight must be in (0, W]
    max_sites: int  # n: the number of selected sites (the most that can add into one sum)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_range) and 0 < self.clip_range <= MAX_CLIP_RANGE):
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT,
                f"secagg clip_range {self.clip_range} must be in (0, {MAX_CLIP_RANGE:g}]",
            )
        if not (math.isfinite(self.max_weight) and 0 < self.max_weight <= MAX_WEIGHT_LIMIT):
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT,
                f"secagg max_weight {self.max_weight} must be in (0, {MAX_WEIGHT_LIMIT:g}]",
            )
        if not 1 <= self.max_sites <= MAX_SITES_PER_ROUND:
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT,
                f"secure aggregation takes 1 to {MAX_SITES_PER_ROUND} sites per round, not {self.max_sites}",
            )

    @property
    def levels(self) -> int:
        """L: quantized values lie in [-L, L]; n * L < 2^31, so no sum of n of them overflows int32."""
        return INT32_MAX // self.max_sites - 1

    @property
    def step(self) -> float:
        """The value of one quantization level of a weighted element."""
        return self.max_weight * self.clip_range / self.levels

    @property
    def weight_step(self) -> float:
        """The value of one quantization level of the weight element."""
        return self.max_weight / self.levels


def _stochastic_round(
    scaled: NDArray[np.float64], levels: int, rng: np.random.Generator
) -> NDArray[np.uint32]:
    """Round each value down or up with the probabilities that make the result unbiased; as uint32."""
    floor = np.floor(scaled)
    rounded = floor + (rng.random(scaled.shape) < (scaled - floor))
    # float error in y / step could give L + 1 at the clip boundary; the bound needs [-L, L]
    np.clip(rounded, -levels, levels, out=rounded)
    return rounded.astype(np.int64).astype(np.int32).view(np.uint32)


def cap_weight(weight: float, params: QuantizationParams) -> float:
    """``min(weight, max_weight)``: a site's weight is capped, as in DP-FedAvg (McMahan et al. 2018,
    w_k = min(n_k / w_hat, 1)). It keeps the quantization precise (error grows with max_weight over
    the typical weight) and bounds how much one site can claim by reporting a huge example count."""
    return min(weight, params.max_weight)


def check_weight(weight: float, params: QuantizationParams) -> None:
    if not (math.isfinite(weight) and 0 < weight <= params.max_weight):
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"a site's weight {weight} must be in (0, {params.max_weight:g}] (privacy.secagg.max_weight); "
            "raise max_weight in the spec",
        )


def quantize_chunk(
    values: NDArray[np.floating], weight: float, params: QuantizationParams, rng: np.random.Generator
) -> NDArray[np.uint32]:
    """``SR(weight * clip(values) / step) mod 2^32``, flat. Refuses NaN / inf (they cannot be clipped)."""
    check_weight(weight, params)
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(flat).all():
        raise FedtuneError(ErrorCode.NON_FINITE, "the update holds NaN or inf; it cannot be quantized")
    scaled = np.clip(flat, -params.clip_range, params.clip_range)
    scaled *= weight / params.step
    return _stochastic_round(scaled, params.levels, rng)


def quantize_weight(
    weight: float, params: QuantizationParams, rng: np.random.Generator
) -> NDArray[np.uint32]:
    """The weight as one more element, ``SR(weight / weight_step)``, so the sum of weights is recoverable."""
    check_weight(weight, params)
    return _stochastic_round(np.array([weight / params.weight_step]), params.levels, rng)


def dequantize_sum(summed: NDArray[np.uint32], params: QuantizationParams) -> NDArray[np.float64]:
    """The unmasked modular sum of weighted elements, back to floats: ``sum_i w_i * clip(x_i)``."""
    return np.asarray(summed, dtype=np.uint32).view(np.int32).astype(np.float64) * params.step


def dequantize_weight_sum(summed_weight: int, params: QuantizationParams) -> float:
    """The unmasked modular sum of the weight elements, back to ``sum_i w_i``."""
    signed = int(summed_weight) % 2**MODULUS_BITS
    if signed >= 2**31:
        signed -= 2**MODULUS_BITS
    return float(signed * params.weight_step)


def weighted_mean(
    summed: NDArray[np.uint32], weight_sum: float, params: QuantizationParams
) -> NDArray[np.float32]:
    """``sum_i w_i x_i / sum_i w_i`` from the unmasked sums (``weight_sum``: ``dequantize_weight_sum``)."""
    if not weight_sum > 0:
        raise FedtuneError(
            ErrorCode.WRONG_STATE, f"the summed weight is {weight_sum}; no site contributed to this sum"
        )
    return (dequantize_sum(summed, params) / weight_sum).astype(np.float32)


def sum_error_bound(params: QuantizationParams, sites: int) -> float:
    """Max abs error of the dequantized weighted sum, per element, for ``sites`` contributors."""
    return sites * params.step


def mean_error_bound(params: QuantizationParams, weight_sum: float, sites: int) -> float:
    """Max abs error of the weighted mean per element (against the mean of the clipped floats).

    With ``Y' = Y + e_y``, ``S' = S + e_w``, ``|e_y| < m*step``, ``|e_w| < m*weight_step`` and
    ``|Y/S| <= c``: ``|Y'/S' - Y/S| <= (|e_y| + c*|e_w|) / (S - |e_w|)``. ``weight_sum`` may be the
    true S or the dequantized S' (then S >= S' - |e_w|, hence the 2 below). Add float32 output rounding.
    """
    weight_error = sites * params.weight_step
    if weight_sum <= 2 * weight_error:
        return math.inf
    bound = (sites * params.step + params.clip_range * weight_error) / (weight_sum - 2 * weight_error)
    return bound + params.clip_range * 2.0**-23  # the float32 result's own rounding
