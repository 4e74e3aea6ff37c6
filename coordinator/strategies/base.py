"""The strategy contract: what the coordinator calls to aggregate one round (design.md section 5).

Call order for one round::

    strategy.begin_round(inputs)            # (re)creates empty accumulators in inputs.workdir
    for each verified spooled update:
        w = strategy.weight(update, inputs)
        strategy.fold(update, w)            # streams the update into the accumulators, O(chunk) memory
    result = strategy.finish_round()        # new global tensors (+ server state) as files in workdir

A restarted coordinator calls ``begin_round`` again and re-folds every spooled update; the result is
the same as if it had never stopped. If ``fold`` raises, the accumulators are left half-updated: the
strategy refuses to finish until ``begin_round`` is called again.

Tensors are numpy (the coordinator has no torch). Updates carry trained weights, not deltas, in
exactly the layout (names, dtypes, shapes) of the version the round started from.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.manifest import Manifest
from fedtune.tensorstream.safetensors_file import WrittenDigests


@dataclass(frozen=True)
class RoundInputs:
    workdir: Path  # scratch dir for this round; accumulators live here
    manifest: Manifest  # layout of the trainable tensors
    global_path: Path  # safetensors file of the version this round started from
    state_path: Path | None  # server state (safetensors) saved after the previous round, None at first
    state_scalars: dict[str, float] = field(default_factory=dict)
    round: int = 1  # 1-based within the stage
    # Site-level DP (DP-FedAvg, decision 36): every update weighs 1 (a site's influence on the sum is at
    # most its clip norm), and the weighted-mean family adds N(0, sum_noise_std^2) to the sum of the
    # updates before dividing (0 with secure aggregation: the sites added the noise).
    uniform_weights: bool = False
    sum_noise_std: float = 0.0


@dataclass(frozen=True)
class UpdateInfo:
    path: Path  # verified spooled safetensors update (trained weights)
    num_examples: int
    metrics: dict[str, float]
    site: str


@dataclass(frozen=True)
class RoundResult:
    new_tensors_path: Path  # safetensors file in workdir: the new global tensors (global's dtypes)
    state_path: Path | None  # server state to persist (safetensors in workdir) or None
    state_scalars: dict[str, float]
    metrics: dict[str, float]  # e.g. total weight, update norm, per-strategy figures
    # sha256s of new_tensors_path as written (file, data section), when the strategy's writer knows
    # them; the commit then moves the file into the blob store without reading it again (decision 41)
    new_tensors_digests: WrittenDigests | None = None


class Strategy(ABC):
    """One aggregation method. Subclasses set `name` and `config_model` and are registered."""

    name: ClassVar[str]
    config_model: ClassVar[type[BaseModel]]  # pydantic, extra="forbid", validates itself
    needs_all_updates: ClassVar[bool] = False  # True: finish_round reads all spooled updates
    _inputs: RoundInputs | None = None  # set by begin_round

    def __init__(self, config: BaseModel) -> None:
        self.config = config

    def _round(self) -> RoundInputs:
        """The current round's inputs; WRONG_STATE before begin_round."""
        if self._inputs is None:
            raise FedtuneError(
                ErrorCode.WRONG_STATE, f"{self.name}: call begin_round before fold/finish_round"
            )
        return self._inputs

    def client_training_overrides(self) -> dict[str, Any]:
        """Fields merged into each site's TrainingSpec for this stage (e.g. ``{"proximal_mu": 0.01}``)."""
        return {}

    def weight(self, update: UpdateInfo, inputs: RoundInputs) -> float:
        """The update's aggregation weight; by default its example count."""
        return float(update.num_examples)

    @abstractmethod
    def begin_round(self, inputs: RoundInputs) -> None:
        """(Re)create empty accumulators for a round; calling it again starts the round over."""

    @abstractmethod
    def fold(self, update: UpdateInfo, weight: float) -> None:
        """Stream one verified update into the accumulators."""

    @abstractmethod
    def finish_round(self) -> RoundResult:
        """Finalise the round: write the new global tensors (and server state) into the workdir."""


def check_fold_weight(update: UpdateInfo, weight: float) -> None:
    """INVALID_ARGUMENT unless an update's aggregation weight is finite and >= 0."""
    if not math.isfinite(weight) or weight < 0:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"update from {update.site}: weight must be finite and >= 0, got {weight}",
        )
