"""The weighted-mean family: a streaming weighted mean of updates, then a server step.

FedAvg's server step is the identity; FedAvgM and the adaptive server optimisers (FedAdagrad,
FedAdam, FedYogi) override only `_server_step` and declare the per-tensor buffers they persist.

Precision: the running sum sum_i(w_i * u_i) is a float64 file, added to in batches of up to
`FOLD_BATCH` updates (one pass over the file per batch, with the same roundings as one pass per
update, decision 41). Each coordinate receives one rounding per site in float64 (relative error
~1e-16 x sites), so the mean is exact to float32 tolerance for any number of sites and - the point
for restart safety - practically independent of the order in which updates are folded (a restarted
coordinator may re-fold in another order): two orders can give different float32 results only where
the mean lies within ~sites x 2^-53 (relative) of a float32 rounding boundary, then by one ulp.
The float64 file costs twice the disk of a float32 one, never memory.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from coordinator.strategies.base import RoundInputs, RoundResult, Strategy, UpdateInfo, check_fold_weight
from coordinator.strategies.flatfile import FlatFile
from coordinator.strategies.server_state import ServerState
from fedtune.dp_mechanism import secure_rng
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.dtypes import finite_max_abs_raw, wire_dtype
from fedtune.tensorstream.manifest import Manifest
from fedtune.tensorstream.safetensors_file import (
    SafetensorsFileWriter,
    iter_float32_views,
    read_header,
)

# Judging an update (its finite check) maps this many of its values (4 MiB of float32) at a time.
FOLD_ELEMENTS = 1 << 20
# Updates added to the float64 sum in one pass, and the values per update mapped at a time while doing
# so: memory O(FOLD_BATCH x BATCH_ELEMENTS x 12 bytes), 48 MiB at most, however large the model.
FOLD_BATCH = 4
BATCH_ELEMENTS = 1 << 20
# finish_round computes this many values at a time: its float64 temporaries (a few per value) then stay
# small enough for the allocator to reuse instead of mapping fresh pages for each (decision 41).
FINISH_ELEMENTS = 1 << 18


def check_round_manifest(manifest: Manifest) -> None:
    manifest.validate()
    for t in manifest.tensors:
        if not wire_dtype(t.dtype).floating:
            raise FedtuneError(
                ErrorCode.BAD_MANIFEST,
                f"tensor {t.name!r} is {t.dtype}: only floating tensors can be aggregated; "
                "leave integer buffers out of the trainable manifest",
            )


def check_file_layout(path: object, manifest: Manifest, what: str) -> None:
    found, _ = read_header(path)  # type: ignore[arg-type]
    if not found.same_layout(manifest):
        raise FedtuneError(
            ErrorCode.BAD_MANIFEST,
            f"{what} {path} does not have the round's layout (names, dtypes, shapes in manifest order)",
        )


class WeightedMeanStrategy(Strategy):
    """mean = sum_i w_i u_i / sum_i w_i, streamed into a float64 file; new = _server_step(mean, global)."""

    def begin_round(self, inputs: RoundInputs) -> None:
        check_round_manifest(inputs.manifest)
        check_file_layout(inputs.global_path, inputs.manifest, "global version")
        self.close()
        self._inputs = inputs
        numel = sum(t.numel for t in inputs.manifest.tensors)
        self._sum = FlatFile(inputs.workdir / f"{self.name}-weighted-sum.f64", numel, np.float64).create()
        self._total_weight = 0.0
        self._num_folded = 0
        self._pending: list[tuple[Path, float]] = []  # judged, not yet added to the sum
        self._fold_failed = False
        self._state = ServerState(inputs.workdir, inputs.manifest, self.state_buffers())
        self._state.load(inputs.state_path)

    def weight(self, update: UpdateInfo, inputs: RoundInputs) -> float:
        """The example count, or 1 under site-level DP (uniform weights bound each site's influence)."""
        return 1.0 if inputs.uniform_weights else float(update.num_examples)

    def fold(self, update: UpdateInfo, weight: float) -> None:
        inputs = self._round()
        check_fold_weight(update, weight)
        check_file_layout(update.path, inputs.manifest, f"update from {update.site}")
        if weight > 0:
            self._fold_failed = True  # until the update is queued; a refused one spoils the instance
            for _, values in iter_float32_views(update.path, FOLD_ELEMENTS):
                if finite_max_abs_raw(values, "float32") is None:
                    raise FedtuneError(
                        ErrorCode.NON_FINITE,
                        f"update from {update.site} has NaN/Inf values; it cannot be folded",
                    )
            self._pending.append((update.path, weight))
            self._fold_failed = False
            if len(self._pending) >= FOLD_BATCH:
                self._add_pending()
        self._total_weight += weight
        self._num_folded += 1

    def fold_weighted_sum(self, start: int, weighted_sum: np.ndarray) -> None:
        """Add a chunk of sum_i w_i u_i computed elsewhere (secure aggregation: the unmasked, dequantized
        sum of the masked updates, coordinator/secagg/masked_sum.py); flat element `start` on."""
        self._round()
        self._add_pending()
        self._sum.add(start, weighted_sum)

    def count_folded(self, total_weight: float, updates: int) -> None:
        """Count updates whose weighted sum came through ``fold_weighted_sum``, with their total weight."""
        self._total_weight += total_weight
        self._num_folded += updates

    def _add_pending(self) -> None:
        """Add the queued updates to the float64 sum in one pass, in the order they were folded.

        Judging an update (layout, weight, finite values) happens in `fold`; the sum itself is deferred
        until `FOLD_BATCH` updates are queued (or the round finishes), so that each block of the sum is
        read and written once per batch instead of once per update, with the same roundings in the same
        order as one pass per update (decision 41). A failure here is not the refusal of the update
        being folded: it surfaces as an OSError, so the caller drops and rebuilds the accumulator."""
        if not self._pending:
            return
        self._fold_failed = True
        try:
            readers = [iter_float32_views(path, BATCH_ELEMENTS) for path, _ in self._pending]
            for pieces in zip(*readers, strict=True):
                terms = [
                    (values, weight) for (_, values), (_, weight) in zip(pieces, self._pending, strict=True)
                ]
                self._sum.add_many(pieces[0][0], terms)
        except FedtuneError as err:  # a spooled file that changed after it was judged
            raise OSError(f"{self.name}: adding the queued updates failed: {err.message}") from err
        self._pending = []
        self._fold_failed = False

    # --- hooks for variants -------------------------------------------------------------------
    def state_buffers(self) -> dict[str, float]:
        """Per-tensor buffers persisted as server state: name -> value before the first round."""
        return {}

    def _server_step(self, mean: np.ndarray, global_: np.ndarray, state: dict[str, np.ndarray]) -> np.ndarray:
        """New values of a chunk from the weighted mean and the global (float64); may update `state`."""
        return mean

    def _next_state_scalars(self, inputs: RoundInputs) -> dict[str, float]:
        return dict(inputs.state_scalars)

    def _round_metrics(self) -> dict[str, float]:
        return {}

    # ------------------------------------------------------------------------------------------
    def finish_round(self) -> RoundResult:
        inputs = self._round()
        if not self._fold_failed:
            self._add_pending()
        if self._fold_failed:
            raise FedtuneError(
                ErrorCode.WRONG_STATE,
                f"{self.name}: a fold failed midway; call begin_round and re-fold the updates",
            )
        if self._num_folded == 0:
            raise FedtuneError(ErrorCode.WRONG_STATE, f"{self.name}: no updates were folded this round")
        if self._total_weight <= 0:
            raise FedtuneError(
                ErrorCode.WRONG_STATE,
                f"{self.name}: the {self._num_folded} folded updates have total weight 0 "
                "(no training examples?)",
            )
        tensors_path = inputs.workdir / f"round-{inputs.round}-{self.name}-tensors.safetensors"
        state_path = inputs.workdir / f"round-{inputs.round}-{self.name}-state.safetensors"
        has_state = bool(self.state_buffers())
        squared_change = 0.0
        noise = secure_rng() if inputs.sum_noise_std > 0 else None
        with SafetensorsFileWriter(tensors_path, inputs.manifest, digests=True) as writer:
            state_writer = self._state.open_writer(state_path) if has_state else None
            try:
                for start, global_values in iter_float32_views(inputs.global_path, FINISH_ELEMENTS):
                    count = global_values.size
                    mean = self._sum.read(start, count)
                    if noise is not None:  # site-level DP: Gaussian noise on the sum (decision 36)
                        mean += noise.normal(0.0, inputs.sum_noise_std, size=count)
                    mean /= self._total_weight
                    state = self._state.read(start, count) if has_state else {}
                    new = self._server_step(mean, global_values.astype(np.float64), state).astype(np.float32)
                    writer.write_flat_float32(start, new)
                    squared_change += float(np.square(new - global_values, dtype=np.float64).sum())
                    if state_writer is not None:
                        self._state.write(state_writer, start, state)
                if state_writer is not None:
                    state_writer.commit()
            except BaseException:
                if state_writer is not None:
                    state_writer.discard()
                raise
        self.close()  # files reopen on demand if finish_round is called again
        metrics = {
            "total_weight": self._total_weight,
            "num_updates": float(self._num_folded),
            "update_norm": math.sqrt(squared_change),
            **({"sum_noise_std": inputs.sum_noise_std} if inputs.sum_noise_std > 0 else {}),
            **self._round_metrics(),
        }
        return RoundResult(
            new_tensors_path=tensors_path,
            new_tensors_digests=writer.written_digests,
            state_path=state_path if has_state else None,
            state_scalars=self._next_state_scalars(inputs),
            metrics=metrics,
        )

    def close(self) -> None:
        """Release open files (the workdir's files stay until the coordinator removes the round)."""
        if getattr(self, "_sum", None) is not None:
            self._sum.close()
        if getattr(self, "_state", None) is not None:
            self._state.close()
