"""FedProx (Li et al. 2020): FedAvg on the server; each site adds a proximal term to its loss."""

from __future__ import annotations

from typing import Any

from coordinator.strategies.fedavg.strategy import FedAvg
from coordinator.strategies.fedprox.config import FedProxConfig
from coordinator.strategies.registry import register


@register
class FedProx(FedAvg):
    name = "fedprox"
    config_model = FedProxConfig
    config: FedProxConfig

    def client_training_overrides(self) -> dict[str, Any]:
        return {"proximal_mu": self.config.mu}
