from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Signal = Literal["divergence", "metric"]


def _default_signals() -> list[Signal]:
    return ["divergence"]


class FedAvgAdaptiveConfig(BaseModel):
    """weight_i = n_i x divergence factor x metric factor; see the strategy's docstring for the rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    signals: list[Signal] = Field(default_factory=_default_signals, min_length=1)

    # divergence: d_i = ||u_i - global||_2;
    # factor = min(1, outlier_ratio * reference / d_i) ** divergence_power
    outlier_ratio: float = Field(2.0, gt=1)
    divergence_power: float = Field(1.0, gt=0)
    # the reference is an EMA over rounds of each round's median divergence (decay = weight of the old value)
    reference_decay: float = Field(0.5, ge=0, lt=1)

    # metric: factor = max(value, metric_floor) ** metric_power (higher is better), or its inverse
    metric: str = Field("eval_accuracy", min_length=1)
    higher_is_better: bool = True
    metric_power: float = Field(1.0, gt=0)
    metric_floor: float = Field(0.01, gt=0)
    # a site that does not report `metric`: None = reject its update, a number = use this value
    missing_metric_value: float | None = None

    @model_validator(mode="after")
    def _check(self) -> "FedAvgAdaptiveConfig":
        if len(set(self.signals)) != len(self.signals):
            raise ValueError(f"signals has duplicates: {self.signals}")
        return self
