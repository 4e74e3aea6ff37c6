"""FedAdagrad: FedAdam with the accumulating second moment v + delta^2 (Reddi et al. 2021)."""

from __future__ import annotations

import numpy as np

from coordinator.strategies.fedadagrad.config import FedAdagradConfig
from coordinator.strategies.fedadam.strategy import FedAdam
from coordinator.strategies.registry import register


@register
class FedAdagrad(FedAdam):
    name = "fedadagrad"
    config_model = FedAdagradConfig
    config: FedAdagradConfig  # type: ignore[assignment]

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return np.asarray(v + delta_sq)
