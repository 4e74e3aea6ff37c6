"""Coordinate-wise median (Yin et al. 2018): each value is the median over sites; tolerates fewer than
half of the sites being arbitrarily wrong. Even site counts take the mean of the two middle values."""

from __future__ import annotations

import numpy as np

from coordinator.strategies.median.config import MedianConfig
from coordinator.strategies.registry import register
from coordinator.strategies.robust import CoordinateWiseStrategy


@register
class CoordinateMedian(CoordinateWiseStrategy):
    name = "median"
    config_model = MedianConfig

    def _combine(self, stacked: np.ndarray) -> np.ndarray:
        return np.asarray(np.median(stacked, axis=0))
