"""FedYogi: FedAdam with Yogi's additive second moment, v - (1 - beta2) delta^2 sign(v - delta^2),
which grows v only as fast as the gradients demand (Zaheer et al. 2018; Reddi et al. 2021)."""

from __future__ import annotations

import numpy as np

from coordinator.strategies.fedadam.strategy import FedAdam
from coordinator.strategies.fedyogi.config import FedYogiConfig
from coordinator.strategies.registry import register


@register
class FedYogi(FedAdam):
    name = "fedyogi"
    config_model = FedYogiConfig
    config: FedYogiConfig

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return np.asarray(v - (1 - self.config.beta2) * delta_sq * np.sign(v - delta_sq))
