"""FedNCM (Legate et al., NeurIPS 2023): a nearest-class-mean classifier head from pooled statistics.

One round of this strategy replaces training: every site sends, in its classifier layer's tensors, the
per-class sums of that layer's input features and its class counts (fedtune/class_statistics.py). The
coordinator adds them up, so the class means are exactly those of the pooled data, whatever the
label skew, and writes the head

    weight_c = s * mean_c        bias_c = -s * |mean_c|^2 / 2

which ranks classes like the Euclidean distance to their means. The scale s puts a logit gap of
``margin`` between each class mean and its nearest other class. Every other tensor keeps the global
version's values. Later rounds (another stage, any strategy) fine-tune from this head: a head that
separates every pair of classes from the start is what label-skewed sites cannot learn together
(docs/decisions.md 19). A class no site holds keeps its global row (reported as ``head_classes_missing``).

Weights are not used: the statistics are sums already. Memory is O(classes x features).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
from pydantic import BaseModel

from coordinator.strategies.base import RoundInputs, RoundResult, Strategy, UpdateInfo
from coordinator.strategies.fedncm.config import FedNCMConfig
from coordinator.strategies.registry import register
from coordinator.strategies.server_state import CHUNK_ELEMENTS
from coordinator.strategies.weighted_mean import check_file_layout, check_round_manifest
from fedtune.class_statistics import head_tensor_names
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.manifest import Manifest
from fedtune.tensorstream.safetensors_file import SafetensorsFileWriter, iter_float32

COUNT_TOLERANCE = 1e-3  # counts travel as float32: whole numbers up to 2**24 are exact


def _element_offsets(manifest: Manifest) -> dict[str, int]:
    offsets, position = {}, 0
    for t in manifest.tensors:
        offsets[t.name] = position
        position += t.numel
    return offsets


@register
class FedNCM(Strategy):
    name = "fedncm"
    config_model: ClassVar[type[BaseModel]] = FedNCMConfig

    @property
    def _config(self) -> FedNCMConfig:
        assert isinstance(self.config, FedNCMConfig)
        return self.config

    def client_training_overrides(self) -> dict[str, str]:
        return {"class_statistics": self._config.head}

    def begin_round(self, inputs: RoundInputs) -> None:
        check_round_manifest(inputs.manifest)
        check_file_layout(inputs.global_path, inputs.manifest, "global version")
        weight_name, bias_name = head_tensor_names(
            (t.name for t in inputs.manifest.tensors), self._config.head
        )
        shapes = {t.name: tuple(t.shape) for t in inputs.manifest.tensors}
        weight_shape, bias_shape = shapes[weight_name], shapes[bias_name]
        if len(weight_shape) != 2 or bias_shape != (weight_shape[0],):
            raise FedtuneError(
                ErrorCode.BAD_MANIFEST,
                f"{weight_name} {weight_shape} and {bias_name} {bias_shape} are not a linear layer's "
                "(classes, features) weight and (classes,) bias",
            )
        offsets = _element_offsets(inputs.manifest)
        self._weight = (offsets[weight_name], weight_shape)
        self._bias = (offsets[bias_name], bias_shape)
        self._sums = np.zeros(weight_shape, dtype=np.float64)
        self._counts = np.zeros(bias_shape, dtype=np.float64)
        self._num_folded = 0
        self._inputs = inputs

    def _read_head(self, path: object) -> tuple[np.ndarray, np.ndarray]:
        """The (sums, counts) in a file's head tensors, read chunk by chunk (never the whole file)."""
        sums = np.empty(self._sums.size, dtype=np.float64)
        counts = np.empty(self._counts.size, dtype=np.float64)
        for target, (offset, _) in ((sums, self._weight), (counts, self._bias)):
            for start, values in iter_float32(path, CHUNK_ELEMENTS):  # type: ignore[arg-type]
                local = start - offset
                if 0 <= local < target.size:
                    target[local : local + values.size] = values
        return sums.reshape(self._sums.shape), counts

    def fold(self, update: UpdateInfo, weight: float) -> None:
        inputs = self._round()
        check_file_layout(update.path, inputs.manifest, f"update from {update.site}")
        sums, counts = self._read_head(update.path)
        if not (np.isfinite(sums).all() and np.isfinite(counts).all()):
            raise FedtuneError(
                ErrorCode.NON_FINITE, f"update from {update.site} has NaN/Inf class statistics"
            )
        if (counts < 0).any() or (np.abs(counts - np.round(counts)) > COUNT_TOLERANCE).any():
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT,
                f"update from {update.site}: the head bias must hold class counts (whole numbers >= 0), "
                f"got {counts.tolist()[:8]}; is the site's worker running a fedtune without fedncm?",
            )
        self._sums += sums
        self._counts += np.round(counts)
        self._num_folded += 1

    def _head(
        self, global_weight: np.ndarray, global_bias: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        present = self._counts > 0
        if int(present.sum()) < 2:
            raise FedtuneError(
                ErrorCode.WRONG_STATE,
                f"{self.name}: the sites' examples cover {int(present.sum())} class(es); "
                "class means need at least two",
            )
        means = self._sums[present] / self._counts[present, None]
        squared = np.square(means[:, None, :] - means[None, :, :]).sum(-1)
        nearest = float(squared[~np.eye(len(means), dtype=bool)].min())
        if nearest <= 0:
            raise FedtuneError(
                ErrorCode.WRONG_STATE, f"{self.name}: two classes have identical mean features"
            )
        scale = 2.0 * self._config.margin / nearest
        weight = global_weight.astype(np.float64).copy()
        bias = global_bias.astype(np.float64).copy()
        weight[present] = scale * means
        bias[present] = -0.5 * scale * np.square(means).sum(-1)
        metrics = {
            "head_classes_present": float(present.sum()),
            "head_classes_missing": float((~present).sum()),
            "head_examples": float(self._counts.sum()),
            "head_logit_scale": scale,
            "head_nearest_class_distance": math.sqrt(nearest),
        }
        return weight, bias, metrics

    def finish_round(self) -> RoundResult:
        inputs = self._round()
        if self._num_folded == 0:
            raise FedtuneError(ErrorCode.WRONG_STATE, f"{self.name}: no updates were folded this round")
        global_weight, global_bias = self._read_head(inputs.global_path)
        weight, bias, metrics = self._head(global_weight, global_bias)
        replaced = {self._weight[0]: weight.reshape(-1), self._bias[0]: bias.reshape(-1)}
        tensors_path = inputs.workdir / f"round-{inputs.round}-{self.name}-tensors.safetensors"
        squared_change = 0.0
        with SafetensorsFileWriter(tensors_path, inputs.manifest) as writer:
            for start, values in iter_float32(inputs.global_path, CHUNK_ELEMENTS):
                new = values
                for offset, flat in replaced.items():
                    local = start - offset
                    if 0 <= local < flat.size:
                        new = flat[local : local + values.size].astype(np.float32)
                writer.write_flat_float32(start, new)
                squared_change += float(np.square(new - values, dtype=np.float64).sum())
        metrics.update({"num_updates": float(self._num_folded), "update_norm": math.sqrt(squared_change)})
        return RoundResult(new_tensors_path=tensors_path, state_path=None, state_scalars={}, metrics=metrics)
