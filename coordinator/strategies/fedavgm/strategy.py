"""FedAvgM (Hsu et al. 2019): FedAvg's mean as a pseudo-gradient, applied with server momentum.

    delta = global - mean;  buf = momentum * buf + delta;  new = global - server_lr * buf

With server_lr = 1 and momentum = 0 it is FedAvg. `buf` is server state (``momentum.<name>``).
"""

from __future__ import annotations

import numpy as np

from coordinator.strategies.fedavg.strategy import FedAvg
from coordinator.strategies.fedavgm.config import FedAvgMConfig
from coordinator.strategies.registry import register


@register
class FedAvgM(FedAvg):
    name = "fedavgm"
    config_model = FedAvgMConfig
    config: FedAvgMConfig

    def state_buffers(self) -> dict[str, float]:
        return {"momentum": 0.0}

    def _server_step(self, mean: np.ndarray, global_: np.ndarray, state: dict[str, np.ndarray]) -> np.ndarray:
        buf = self.config.momentum * state["momentum"] + (global_ - mean)
        state["momentum"] = buf
        return np.asarray(global_ - self.config.server_lr * buf)
