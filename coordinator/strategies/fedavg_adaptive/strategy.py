"""FedAvg with adaptive client weights for heterogeneous (non-IID) sites.

    weight_i = n_i * D_i * Q_i,   new global = sum_i weight_i u_i / sum_i weight_i

Divergence factor D_i (signal "divergence", the default). d_i = ||u_i - global||_2 is computed in
`weight()` by streaming the update against the global (O(chunk) memory). Let R be the *reference*
divergence: an EMA over the previous rounds of each round's median d (state scalar
``divergence_reference``). Then

    D_i = min(1, c * R / d_i) ** p        (c = outlier_ratio, default 2; p = divergence_power, default 1)

Why this rule: a site whose update moves c times further than a typical site's is either far off
the federation's distribution or broken/poisoned; with p = 1 its pull on the mean, weight_i * d_i,
is capped at what a site of divergence c * R would have (bounded influence, like norm clipping,
but expressed as a weight so the mean stays a convex combination of the sites' models). Sites
within c * R keep their plain FedAvg weight, so an IID federation aggregates exactly like FedAvg.
Why the previous rounds' median and not this round's: the median needs every update, which would
make the round wait for all sites and read each update twice; the reference from earlier rounds
keeps aggregation streaming (fold as updates arrive) and order-independent (a restarted
coordinator computes the same weights). The cost: round 1 has no reference, so D_i = 1 there
(plain FedAvg); the median of round 1's divergences seeds R.

Metric factor Q_i (signal "metric", opt-in): the site's reported evaluation metric (default
``eval_accuracy``), Q_i = max(value, floor) ** q for a higher-is-better metric, (1 / max(value,
floor)) ** q for a lower-is-better one such as ``eval_loss``. Caveat: a site's local eval score
also reflects how hard its own data is, so under strong label skew this favours easy sites; use it
when sites share an eval distribution or when a low score flags a bad site. A site that does not
report the metric is rejected unless ``missing_metric_value`` gives a value to use.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np

from coordinator.strategies.base import RoundInputs, UpdateInfo
from coordinator.strategies.fedavg.strategy import FedAvg
from coordinator.strategies.fedavg_adaptive.config import FedAvgAdaptiveConfig
from coordinator.strategies.registry import register
from coordinator.strategies.server_state import CHUNK_ELEMENTS
from coordinator.strategies.weighted_mean import check_file_layout
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.safetensors_file import iter_float32

REFERENCE_KEY = "divergence_reference"


def divergence(update_path: Path, global_path: Path) -> float:
    """||update - global||_2, streamed chunk by chunk (both files must share a layout)."""
    total = 0.0
    for (start_u, u), (start_g, g) in zip(
        iter_float32(update_path, CHUNK_ELEMENTS), iter_float32(global_path, CHUNK_ELEMENTS), strict=True
    ):
        assert start_u == start_g
        total += float(np.square(u - g, dtype=np.float64).sum())
    return math.sqrt(total)


@register
class FedAvgAdaptive(FedAvg):
    name = "fedavg_adaptive"
    config_model = FedAvgAdaptiveConfig
    config: FedAvgAdaptiveConfig

    def __init__(self, config: FedAvgAdaptiveConfig) -> None:
        super().__init__(config)
        self._divergence_cache: dict[tuple[Path, Path], float] = {}
        self._factors: dict[str, float] = {}
        self._divergences: list[float] = []

    def _divergence(self, update: UpdateInfo, inputs: RoundInputs) -> float:
        key = (Path(update.path), Path(inputs.global_path))
        if key not in self._divergence_cache:
            check_file_layout(update.path, inputs.manifest, f"update from {update.site}")
            self._divergence_cache[key] = divergence(update.path, inputs.global_path)
        return self._divergence_cache[key]

    def _divergence_factor(self, d: float, inputs: RoundInputs) -> float:
        reference = inputs.state_scalars.get(REFERENCE_KEY, 0.0)
        if reference <= 0 or d <= 0:
            return 1.0
        return float(min(1.0, self.config.outlier_ratio * reference / d) ** self.config.divergence_power)

    def _metric_factor(self, update: UpdateInfo) -> float:
        value = update.metrics.get(self.config.metric, self.config.missing_metric_value)
        if value is None or not math.isfinite(value):
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT,
                f"site {update.site} reported no finite {self.config.metric!r} metric, which strategy "
                "fedavg_adaptive weights by; set strategy.options.missing_metric_value to accept such sites",
            )
        clipped = max(value, self.config.metric_floor)
        factor = clipped if self.config.higher_is_better else 1.0 / clipped
        return float(factor**self.config.metric_power)

    def weight(self, update: UpdateInfo, inputs: RoundInputs) -> float:
        factor = 1.0
        if "divergence" in self.config.signals:
            factor *= self._divergence_factor(self._divergence(update, inputs), inputs)
        if "metric" in self.config.signals:
            factor *= self._metric_factor(update)
        return float(update.num_examples) * factor

    def begin_round(self, inputs: RoundInputs) -> None:
        super().begin_round(inputs)
        current = Path(inputs.global_path)
        self._divergence_cache = {k: d for k, d in self._divergence_cache.items() if k[1] == current}
        self._factors = {}
        self._divergences = []

    def fold(self, update: UpdateInfo, weight: float) -> None:
        inputs = self._round()
        super().fold(update, weight)
        if "divergence" in self.config.signals:
            d = self._divergence(update, inputs)
            self._divergences.append(d)
        if update.num_examples > 0:
            self._factors[update.site] = weight / update.num_examples

    def _next_state_scalars(self, inputs: RoundInputs) -> dict[str, float]:
        scalars = dict(inputs.state_scalars)
        if self._divergences:
            median = statistics.median(self._divergences)
            previous = inputs.state_scalars.get(REFERENCE_KEY, 0.0)
            decay = self.config.reference_decay
            scalars[REFERENCE_KEY] = median if previous <= 0 else decay * previous + (1 - decay) * median
        return scalars

    def _round_metrics(self) -> dict[str, float]:
        metrics = {f"factor.{site}": factor for site, factor in sorted(self._factors.items())}
        if self._factors:
            metrics["min_factor"] = min(self._factors.values())
            metrics["downweighted_sites"] = float(sum(f < 1.0 for f in self._factors.values()))
        if self._divergences:
            metrics["divergence_median"] = statistics.median(self._divergences)
            metrics["divergence_max"] = max(self._divergences)
        return metrics
