"""FedAdam (Reddi et al. 2021, Adaptive Federated Optimization, Algorithm 2).

    delta = mean - global                     (pseudo-gradient, mean weighted by example count)
    m = beta1 m + (1 - beta1) delta
    v = second_moment(v, delta^2)             (Adam: beta2 v + (1 - beta2) delta^2)
    new = global + eta m / (sqrt(v) + tau)

m starts at 0 and v at tau^2 (the paper's v_{-1} >= tau^2); no bias correction, as in the paper.
m and v are server state (``m.<name>``, ``v.<name>``, float32) and a ``server_steps`` scalar, so a
restarted coordinator continues them. FedYogi and FedAdagrad override only `_second_moment`.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import BaseModel

from coordinator.strategies.base import RoundInputs
from coordinator.strategies.fedadam.config import FedAdamConfig
from coordinator.strategies.registry import register
from coordinator.strategies.weighted_mean import WeightedMeanStrategy


@register
class FedAdam(WeightedMeanStrategy):
    name = "fedadam"
    config_model: ClassVar[type[BaseModel]] = FedAdamConfig
    config: FedAdamConfig

    def state_buffers(self) -> dict[str, float]:
        return {"m": 0.0, "v": self.config.tau**2}

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        beta2 = self.config.beta2
        return np.asarray(beta2 * v + (1 - beta2) * delta_sq)

    def _server_step(self, mean: np.ndarray, global_: np.ndarray, state: dict[str, np.ndarray]) -> np.ndarray:
        delta = mean - global_
        m = self.config.beta1 * state["m"] + (1 - self.config.beta1) * delta
        v = self._second_moment(state["v"], np.square(delta))
        state["m"], state["v"] = m, v
        return np.asarray(global_ + self.config.eta * m / (np.sqrt(v) + self.config.tau))

    def _next_state_scalars(self, inputs: RoundInputs) -> dict[str, float]:
        return {**inputs.state_scalars, "server_steps": inputs.state_scalars.get("server_steps", 0.0) + 1}
