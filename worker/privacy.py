"""What leaves a site under `privacy.dp` and `privacy.report_metrics` (docs/privacy.md, decision 36).

- `site_level_update`: DP-FedAvg's site part: the update (trained - global) clipped to `dp.clip_norm`,
  plus, with secure aggregation, this site's 1/n share of the round's noise (`fedtune.dp_mechanism`);
  without it the coordinator adds the noise to the sum (coordinator/strategies/weighted_mean.py).
- `reported_metrics`: the task's metrics as the site reports them: `send` as measured; `withhold`
  keeps only operational figures (steps, time, memory, the DP accounting figures); `noise` adds Laplace
  noise to each loss / accuracy figure (scale below) and withholds every other data-derived figure.

The noise scale of `noise`: a figure is clipped to [0, B] (B = 1 for accuracy, F1, precision, recall;
B = LOSS_BOUND for losses) and gets Laplace(B / (n * METRIC_EPSILON)) with n the examples behind it
(the eval examples for eval figures, the training examples for train figures): the Laplace mechanism
for a mean of n values in [0, B], epsilon METRIC_EPSILON per figure and round (for train_loss, a mean of
batch means, the same scale is the usual approximation). These epsilons are not in the ledger.
"""

from __future__ import annotations

import math

import numpy as np

from fedtune.dp_mechanism import clip_and_noise, secure_rng, site_noise
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import DpSpec, PrivacySpec

# Figures about how the task ran, not about the data: always reported. dp_* are the DP-SGD accounting
# figures the coordinator's ledger needs (worker/dp_sgd.py).
OPERATIONAL_METRICS = frozenset(
    {
        "train_steps",
        "train_seconds",
        "examples_per_second",
        "worker_peak_rss_mb",
        "gpu_peak_memory_mb",
        "trainable_parameters",
    }
)
OPERATIONAL_PREFIXES = ("dp_",)
BOUNDED_SUFFIXES = ("accuracy", "f1", "precision", "recall", "exact_match", "rouge_l")  # figures in [0, 1]
LOSS_SUFFIXES = ("loss",)
LOSS_BOUND = 10.0  # a reported loss is clipped to [0, LOSS_BOUND] before its noise
METRIC_EPSILON = 1.0  # the Laplace mechanism's epsilon per noised figure and round


def site_level_update(
    trained: dict[str, np.ndarray],
    global_arrays: dict[str, np.ndarray],
    dp: DpSpec,
    secure_aggregation: bool,
    sites_in_round: int | None,
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """The weights a site sends under site-level DP: global + the clipped update, + this site's share
    of the noise when secure aggregation hides the sum from the coordinator (the secagg path calls this
    with its round's number of selected sites before encoding). Float32, like every update."""
    if secure_aggregation and sites_in_round is None:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            "site-level DP with secure aggregation needs the round's number of selected sites",
        )
    noise = site_noise(dp, secure_aggregation, sites_in_round or 1)
    deltas = {name: trained[name].astype(np.float64) - global_arrays[name] for name in trained}
    noisy, _ = clip_and_noise(deltas, dp.clip_norm, noise.per_site_std, rng or secure_rng())
    return {name: (global_arrays[name] + noisy[name]).astype(np.float32) for name in noisy}


def _operational(key: str) -> bool:
    return key in OPERATIONAL_METRICS or key.startswith(OPERATIONAL_PREFIXES)


def _bound(key: str) -> float | None:
    if key.endswith(BOUNDED_SUFFIXES):
        return 1.0
    if key.endswith(LOSS_SUFFIXES):
        return LOSS_BOUND
    return None


def _examples_behind(key: str, metrics: dict[str, float], num_examples: int) -> int:
    """How many examples a figure averages: `<prefix>examples` for an eval figure, else the training set."""
    prefix = key[: key.rfind("_") + 1] if "eval_" in key else ""
    count = metrics.get(f"{prefix}examples") if prefix else None
    return max(int(count if count is not None else num_examples), 1)


def noise_scale(key: str, metrics: dict[str, float], num_examples: int) -> float | None:
    """The Laplace scale `report_metrics: noise` uses for `key`, None if the figure is withheld."""
    bound = _bound(key)
    if bound is None:
        return None
    return bound / (_examples_behind(key, metrics, num_examples) * METRIC_EPSILON)


def reported_metrics(
    metrics: dict[str, float],
    privacy: PrivacySpec,
    num_examples: int,
    rng: np.random.Generator | None = None,
) -> dict[str, float]:
    """The metrics as `privacy.report_metrics` lets them leave the site."""
    if privacy.report_metrics == "send":
        return dict(metrics)
    out = {key: value for key, value in metrics.items() if _operational(key)}
    if privacy.report_metrics == "withhold":
        return out
    rng = rng or secure_rng()
    for key, value in metrics.items():
        if key in out:
            continue
        scale = noise_scale(key, metrics, num_examples)
        if scale is None or not math.isfinite(value):
            continue
        bound = _bound(key) or 0.0
        out[key] = float(np.clip(value, 0.0, bound) + rng.laplace(0.0, scale))
    return out
