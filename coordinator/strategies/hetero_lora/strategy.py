"""Heterogeneous LoRA ranks (docs/decisions.md 37): the mean of the sites' products B_i A_i, re-factorised.

Sites train ranks r_i <= r and send their factors zero-padded to the global rank r (fedtune/lora_ranks.py),
so every update has the round's layout. Per LoRA pair (A: r x k, B: d x r) the new global is the best
rank-r approximation of the exact weighted mean sum_i w_i B_i A_i / sum_i w_i, as B = U_r S_r and
A = V_r^T (coordinator/strategies/lora_math.py); every other tensor (a classifier head, DoRA magnitudes,
FFA-LoRA's B without its A) is the weighted mean, as in FedAvg.

Streaming and restart safety. Tensors that are not LoRA pairs fold into a float64 weighted-sum file as in
WeightedMeanStrategy. For the pairs:
- ``svd`` adds w_i B_i A_i, a block of rows at a time, into a float64 file of sum(d * k) values (disk,
  not memory); finish_round loads one layer's d x k mean and runs its SVD (memory ~3 x d x k x 8 bytes).
- ``stack`` keeps nothing but the list of verified updates; finish_round reads each site's A and B from
  the spool (in path order, so a restart that re-folds in another order gives the same bytes) and
  re-factorises from the stacked factors (memory ~2 x (d + k) x sum r_i x 8 bytes per layer).
Either way `begin_round` + re-folding the spool rebuilds everything, as for every strategy.
"""

from __future__ import annotations

import bisect
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from coordinator.strategies.base import RoundInputs, RoundResult, Strategy, UpdateInfo, check_fold_weight
from coordinator.strategies.flatfile import FlatFile
from coordinator.strategies.hetero_lora.config import HeteroLoraConfig
from coordinator.strategies.lora_math import (
    refactor_product,
    refactor_stacked,
    stacked_factors,
    truncation_error,
)
from coordinator.strategies.registry import register
from coordinator.strategies.server_state import CHUNK_ELEMENTS
from coordinator.strategies.weighted_mean import check_file_layout, check_round_manifest
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.lora_ranks import lora_pairs
from fedtune.tensorstream.dtypes import to_float32, wire_dtype
from fedtune.tensorstream.manifest import Manifest
from fedtune.tensorstream.safetensors_file import SafetensorsFileWriter, iter_float32, read_header


@dataclass(frozen=True)
class _Pair:
    a: int  # manifest index of A (r x k)
    b: int  # manifest index of B (d x r)
    rank: int
    d: int
    k: int
    dense_start: int  # offset of this layer's d x k block in the svd method's dense file
    seed: int  # for completing A's rows where the mean has fewer than r directions


def read_tensor(path: Path, index: int) -> np.ndarray:
    """Tensor `index` of a safetensors file as float64, in its shape."""
    manifest, data_start = read_header(path)
    spec = manifest.tensors[index]
    offset = data_start + sum(t.nbytes for t in manifest.tensors[:index])
    with open(path, "rb") as f:
        f.seek(offset)
        raw = f.read(spec.nbytes)
    if len(raw) != spec.nbytes:
        raise FedtuneError(ErrorCode.BAD_MANIFEST, f"{path} ends inside tensor {spec.name!r}")
    values = to_float32(np.frombuffer(raw, dtype=wire_dtype(spec.dtype).storage), spec.dtype)
    return values.astype(np.float64).reshape(spec.shape)


def _pairs(manifest: Manifest) -> list[_Pair]:
    index = {t.name: i for i, t in enumerate(manifest.tensors)}
    pairs, dense = [], 0
    for a_name, b_name in lora_pairs(manifest.names):
        a, b = manifest.tensors[index[a_name]], manifest.tensors[index[b_name]]
        if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
            raise FedtuneError(
                ErrorCode.BAD_MANIFEST,
                f"{a_name} {list(a.shape)} and {b_name} {list(b.shape)} are not a LoRA pair (r x k, d x r)",
            )
        rank, k, d = a.shape[0], a.shape[1], b.shape[0]
        pairs.append(_Pair(index[a_name], index[b_name], rank, d, k, dense, zlib.crc32(a_name.encode())))
        dense += d * k
    return pairs


@register
class HeteroLora(Strategy):
    name = "hetero_lora"
    config_model = HeteroLoraConfig
    needs_all_updates: ClassVar[bool] = True  # each site's product, never only the sum (no SecAgg)

    @property
    def method(self) -> str:
        assert isinstance(self.config, HeteroLoraConfig)
        return self.config.method

    def begin_round(self, inputs: RoundInputs) -> None:
        check_round_manifest(inputs.manifest)
        check_file_layout(inputs.global_path, inputs.manifest, "global version")
        self.close()
        self._inputs = inputs
        manifest = inputs.manifest
        self._pairs = _pairs(manifest)
        self._in_pair = {p.a for p in self._pairs} | {p.b for p in self._pairs}
        self._element_starts = [0]
        for t in manifest.tensors:
            self._element_starts.append(self._element_starts[-1] + t.numel)
        self._sum = FlatFile(
            inputs.workdir / f"{self.name}-weighted-sum.f64", self._element_starts[-1]
        ).create()
        dense_numel = sum(p.d * p.k for p in self._pairs) if self.method == "svd" else 0
        self._dense = FlatFile(inputs.workdir / f"{self.name}-dense-sum.f64", dense_numel).create()
        self._updates: dict[str, tuple[UpdateInfo, float]] = {}
        self._total_weight = 0.0
        self._fold_failed = False

    def _tensor_at(self, element: int) -> int:
        return bisect.bisect_right(self._element_starts, element) - 1

    def fold(self, update: UpdateInfo, weight: float) -> None:
        inputs = self._round()
        check_fold_weight(update, weight)
        check_file_layout(update.path, inputs.manifest, f"update from {update.site}")
        key = str(update.path)
        if key in self._updates:  # re-folding the same file is idempotent
            return
        if weight > 0:
            self._fold_failed = True  # until every chunk is in
            for start, values in iter_float32(update.path, CHUNK_ELEMENTS):
                if not np.isfinite(values).all():
                    raise FedtuneError(
                        ErrorCode.NON_FINITE,
                        f"update from {update.site} has NaN/Inf values; it cannot be folded",
                    )
                if self._tensor_at(start) not in self._in_pair:
                    self._sum.add(start, values, weight)
            if self.method == "svd":
                for pair in self._pairs:
                    self._fold_product(update.path, pair, weight)
            self._fold_failed = False
        self._updates[key] = (update, weight)
        self._total_weight += weight

    def _fold_product(self, path: Path, pair: _Pair, weight: float) -> None:
        a, b = read_tensor(path, pair.a), read_tensor(path, pair.b)
        rows = max(1, CHUNK_ELEMENTS // max(1, pair.k))
        for first in range(0, pair.d, rows):
            block = b[first : first + rows] @ a
            self._dense.add(pair.dense_start + first * pair.k, block.reshape(-1), weight)

    def finish_round(self) -> RoundResult:
        inputs = self._round()
        if self._fold_failed:
            raise FedtuneError(
                ErrorCode.WRONG_STATE, f"{self.name}: a fold failed midway; call begin_round and re-fold"
            )
        if not self._updates:
            raise FedtuneError(ErrorCode.WRONG_STATE, f"{self.name}: no updates were folded this round")
        if self._total_weight <= 0:
            raise FedtuneError(
                ErrorCode.WRONG_STATE,
                f"{self.name}: the {len(self._updates)} folded updates have total weight 0 (no examples?)",
            )
        out = inputs.workdir / f"round-{inputs.round}-{self.name}-tensors.safetensors"
        squared_change, errors, stacked_ranks = 0.0, [], []
        with SafetensorsFileWriter(out, inputs.manifest) as writer:
            for start, global_values in iter_float32(inputs.global_path, CHUNK_ELEMENTS):
                if self._tensor_at(start) in self._in_pair:
                    continue
                new = (self._sum.read(start, global_values.size) / self._total_weight).astype(np.float32)
                writer.write_flat_float32(start, new)
                squared_change += float(np.square(new - global_values, dtype=np.float64).sum())
            for pair in self._pairs:
                b_new, a_new, singular, stacked = self._refactor(pair, inputs.round)
                errors.append(truncation_error(singular, pair.rank))
                stacked_ranks.append(stacked)
                for index, values in ((pair.a, a_new), (pair.b, b_new)):
                    new = values.astype(np.float32)
                    writer.write_flat_float32(self._element_starts[index], new)
                    old = read_tensor(inputs.global_path, index)
                    squared_change += float(np.square(new - old).sum())
        self.close()
        metrics = {
            "total_weight": self._total_weight,
            "num_updates": float(len(self._updates)),
            "update_norm": math.sqrt(squared_change),
            "lora_pairs": float(len(self._pairs)),
        }
        if self._pairs:
            metrics["truncation_error_max"] = max(errors)
            metrics["truncation_error_mean"] = float(np.mean(errors))
            if self.method == "stack":
                metrics["stacked_rank_max"] = float(max(stacked_ranks))
        return RoundResult(
            new_tensors_path=out, state_path=None, state_scalars=dict(inputs.state_scalars), metrics=metrics
        )

    def _refactor(self, pair: _Pair, round_: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(B, A, singular values of the mean update, stacked rank or 0) for one LoRA pair."""
        seed = pair.seed ^ round_
        if self.method == "svd":
            mean = self._dense.read(pair.dense_start, pair.d * pair.k).reshape(pair.d, pair.k)
            b, a, s = refactor_product(mean / self._total_weight, pair.rank, seed)
            return b, a, s, 0
        used = sorted((key, w) for key, (_, w) in self._updates.items() if w > 0)
        bs = [read_tensor(Path(key), pair.b) for key, _ in used]
        as_ = [read_tensor(Path(key), pair.a) for key, _ in used]
        weights = [w / self._total_weight for _, w in used]
        weights = [w / sum(weights) for w in weights]  # exactly 1 for lora_math's check
        b_stack, a_stack = stacked_factors(bs, as_, weights)
        b, a, s = refactor_stacked(b_stack, a_stack, pair.rank, seed)
        return b, a, s, b_stack.shape[1]

    def close(self) -> None:
        """Release open files (the workdir's files stay until the coordinator removes the round)."""
        for flat in (getattr(self, "_sum", None), getattr(self, "_dense", None)):
            if flat is not None:
                flat.close()
