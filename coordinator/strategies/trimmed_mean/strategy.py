"""Coordinate-wise trimmed mean (Yin et al. 2018): per value, drop the k largest and k smallest site
values (k = floor(trim_fraction * sites)) and average the rest. k = 0 is the unweighted mean."""

from __future__ import annotations

import math

import numpy as np

from coordinator.strategies.registry import register
from coordinator.strategies.robust import CoordinateWiseStrategy
from coordinator.strategies.trimmed_mean.config import TrimmedMeanConfig


@register
class TrimmedMean(CoordinateWiseStrategy):
    name = "trimmed_mean"
    config_model = TrimmedMeanConfig
    config: TrimmedMeanConfig

    def _combine(self, stacked: np.ndarray) -> np.ndarray:
        sites = stacked.shape[0]
        k = math.floor(self.config.trim_fraction * sites)
        if k == 0:
            return np.asarray(stacked.mean(axis=0, dtype=np.float64))
        ordered = np.sort(stacked, axis=0)
        return np.asarray(ordered[k : sites - k].mean(axis=0, dtype=np.float64))
