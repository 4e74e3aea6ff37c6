"""Registered strategies by name, and building one from a stage's ``strategy: {name, options}``."""

from __future__ import annotations

import enum
from typing import Any, TypeVar

from pydantic import ValidationError

from coordinator.strategies.base import Strategy
from fedtune.errors import ErrorCode, FedtuneError


class StrategyName(enum.StrEnum):
    """The shipped strategies; `register` refuses a name not listed here (one place to see them all)."""

    FEDAVG = "fedavg"
    FEDPROX = "fedprox"
    FEDAVGM = "fedavgm"
    FEDADAGRAD = "fedadagrad"
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"
    FEDAVG_ADAPTIVE = "fedavg_adaptive"
    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed_mean"
    FEDNCM = "fedncm"
    HETERO_LORA = "hetero_lora"


STRATEGIES: dict[str, type[Strategy]] = {}

S = TypeVar("S", bound=type[Strategy])


def register(cls: S) -> S:
    """Class decorator: make `cls` buildable by its `name`."""
    if cls.name not in StrategyName._value2member_map_:
        raise ValueError(f"strategy name {cls.name!r} is not in StrategyName; add it there first")
    existing = STRATEGIES.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"strategy name {cls.name!r} is taken by {existing.__qualname__}")
    STRATEGIES[cls.name] = cls
    return cls


def _options_error(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"])
        parts.append(f"strategy.options{'.' + where if where else ''}: {item['msg']}")
    return "; ".join(parts)


def build_strategy(name: str, options: dict[str, Any] | None = None) -> Strategy:
    """A strategy instance from its registered name and options; bad input raises INVALID_SPEC."""
    _load_builtin_strategies()
    cls = STRATEGIES.get(name)
    if cls is None:
        known = ", ".join(sorted(STRATEGIES))
        raise FedtuneError(
            ErrorCode.INVALID_SPEC, f"strategy.name: unknown strategy {name!r}; use one of {known}"
        )
    try:
        config = cls.config_model.model_validate(options or {})
    except ValidationError as err:
        raise FedtuneError(ErrorCode.INVALID_SPEC, _options_error(err)) from None
    return cls(config)


def _load_builtin_strategies() -> None:
    import coordinator.strategies  # noqa: F401  (its __init__ imports and registers every built-in)
