"""Aggregation strategies (design.md section 5). Importing this package registers every built-in one.

Use `build_strategy(name, options)`; the contract is in `base.py`.
"""

from coordinator.strategies import (  # noqa: F401  (each import registers its strategy)
    fedadagrad,
    fedadam,
    fedavg,
    fedavg_adaptive,
    fedavgm,
    fedncm,
    fedprox,
    fedyogi,
    hetero_lora,
    median,
    trimmed_mean,
)
from coordinator.strategies.base import RoundInputs, RoundResult, Strategy, UpdateInfo
from coordinator.strategies.registry import STRATEGIES, build_strategy, register

__all__ = ["STRATEGIES", "RoundInputs", "RoundResult", "Strategy", "UpdateInfo", "build_strategy", "register"]
