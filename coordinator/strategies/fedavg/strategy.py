"""FedAvg (McMahan et al. 2017): the new global is the mean of the updates weighted by example count."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from coordinator.strategies.fedavg.config import FedAvgConfig
from coordinator.strategies.registry import register
from coordinator.strategies.weighted_mean import WeightedMeanStrategy


@register
class FedAvg(WeightedMeanStrategy):
    name = "fedavg"
    config_model: ClassVar[type[BaseModel]] = FedAvgConfig
