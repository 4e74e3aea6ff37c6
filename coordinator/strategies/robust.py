"""Robust aggregation over all spooled updates: coordinate-wise statistics that ignore outliers.

These need every update at once per coordinate, so `fold` only records the (verified) update and
`finish_round` streams all of them side by side, one chunk per update: memory O(sites x chunk),
with the chunk shrunk as sites grow so that the stacked block stays ~16 MiB.
Weights are not used by the statistic (a coordinate-wise median has no natural weighting that keeps
its breakdown point); an update of weight 0 (no examples) is left out.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from contextlib import ExitStack
from typing import ClassVar

import numpy as np

from coordinator.strategies.base import RoundInputs, RoundResult, Strategy, UpdateInfo, check_fold_weight
from coordinator.strategies.weighted_mean import check_file_layout, check_round_manifest
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.safetensors_file import SafetensorsFileWriter, iter_float32

STACK_ELEMENTS = 1 << 22  # float32 values held at once across all updates (16 MiB)


class CoordinateWiseStrategy(Strategy):
    needs_all_updates: ClassVar[bool] = True
    min_updates: ClassVar[int] = 1

    def begin_round(self, inputs: RoundInputs) -> None:
        check_round_manifest(inputs.manifest)
        check_file_layout(inputs.global_path, inputs.manifest, "global version")
        self._inputs = inputs
        self._updates: dict[str, tuple[UpdateInfo, float]] = {}

    def fold(self, update: UpdateInfo, weight: float) -> None:
        inputs = self._round()
        check_fold_weight(update, weight)
        check_file_layout(update.path, inputs.manifest, f"update from {update.site}")
        self._updates[str(update.path)] = (update, weight)  # re-folding the same file is idempotent

    @abstractmethod
    def _combine(self, stacked: np.ndarray) -> np.ndarray:
        """(sites, chunk) float32 -> (chunk,) aggregated values."""

    def finish_round(self) -> RoundResult:
        inputs = self._round()
        used = [u for u, w in self._updates.values() if w > 0]
        if len(used) < max(1, self.min_updates):
            raise FedtuneError(
                ErrorCode.WRONG_STATE,
                f"{self.name}: needs at least {max(1, self.min_updates)} updates with weight > 0, "
                f"{len(used)} were folded this round",
            )
        chunk = max(1024, STACK_ELEMENTS // len(used))
        out = inputs.workdir / f"round-{inputs.round}-{self.name}-tensors.safetensors"
        squared_change = 0.0
        with SafetensorsFileWriter(out, inputs.manifest) as writer, ExitStack() as stack:
            readers = [iter_float32(u.path, chunk) for u in used]
            for reader in readers:  # close the open files even if a chunk fails
                stack.callback(getattr(reader, "close", lambda: None))
            for start, global_values in iter_float32(inputs.global_path, chunk):
                pieces = [next(r) for r in readers]
                if any(s != start for s, _ in pieces):
                    raise FedtuneError(
                        ErrorCode.BAD_MANIFEST, "spooled updates are not aligned with the global"
                    )
                stacked = np.stack([values for _, values in pieces])
                if not np.isfinite(stacked).all():
                    raise FedtuneError(ErrorCode.NON_FINITE, f"{self.name}: an update has NaN/Inf values")
                new = self._combine(stacked).astype(np.float32)
                writer.write_flat_float32(start, new)
                squared_change += float(np.square(new - global_values, dtype=np.float64).sum())
        return RoundResult(
            new_tensors_path=out,
            state_path=None,
            state_scalars=dict(inputs.state_scalars),
            metrics={
                "total_weight": float(sum(w for _, w in self._updates.values())),
                "num_updates": float(len(used)),
                "update_norm": math.sqrt(squared_change),
            },
        )
