"""The models a worker's tasks run on, built once and kept: one object, owned by the daemon.

Loading a base model takes seconds to minutes, and every round of an experiment needs the same one, so
the factory keeps the last model of each kind (the task's classifier or causal LM, the global stage's
LM) and hands it back with its adapter reset to the seeded initial state. It also keeps the last merged
global-stage backbone (keyed by the version file's digest) and the sha256 of every base weights file it
checked. One slot per kind keeps memory bounded: a worker runs one experiment's task at a time.

The builders (worker/model.py, worker/global_stage.py) keep nothing themselves, so a `ModelFactory()`
made on the spot is an independent, uncached build (a benchmark baseline, a test's reference model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import torch

from fedtune.spec import ExperimentSpec
from worker import global_stage
from worker.device import DeviceChoice
from worker.lm import LmKind
from worker.model import BuiltModel, build_classifier, check_digest, file_sha256, model_dir
from worker.precision import with_precision
from worker.task_io import read_global

V = TypeVar("V")


@dataclass
class _Slot(Generic[V]):
    """The last value built for a key; a new key replaces it."""

    key: str = ""
    value: V | None = None

    def get(self, key: str) -> V | None:
        return self.value if self.value is not None and self.key == key else None

    def put(self, key: str, value: V) -> V:
        self.key, self.value = key, value
        return value

    def clear(self) -> None:
        self.key, self.value = "", None


@dataclass
class ModelFactory:
    task_models: _Slot[BuiltModel] = field(default_factory=_Slot)
    lm_models: _Slot[tuple[BuiltModel, LmKind]] = field(default_factory=_Slot)
    merged_backbones: _Slot[tuple[str, dict[str, torch.Tensor]]] = field(default_factory=_Slot)
    weights_sha256: dict[Path, str] = field(default_factory=dict)

    def model(
        self,
        spec: ExperimentSpec,
        model_root: Path,
        device: DeviceChoice,
        base_adapter_path: Path | None = None,
    ) -> BuiltModel:
        """The task's model (spec.task, spec.peft) at its initial state; with `base_adapter_path` (the
        last global-stage version) built on the base with that version merged in."""
        device = with_precision(device, spec.base_model)
        path = model_dir(spec, model_root)
        base_digest, base_state = "", None
        if base_adapter_path is not None:
            base_digest, base_state = self.merged_backbone(spec, model_root, Path(base_adapter_path), device)
        key = json.dumps(
            [
                str(path.resolve()),
                spec.task,
                spec.labels,
                spec.peft.model_dump(),
                spec.base_model.model_dump(),
                spec.seed,
                str(device.device),
                str(device.train_dtype),
                base_digest,
            ]
        )
        kept = self.task_models.get(key)
        if kept is not None:
            kept.reset()
            return kept
        self._check_digest(spec, path)
        self.task_models.clear()  # let the old model go before the new one loads
        return self.task_models.put(key, build_classifier(spec, path, device, base_state))

    def lm_model(
        self, spec: ExperimentSpec, model_root: Path, device: DeviceChoice
    ) -> tuple[BuiltModel, LmKind]:
        """The global stage's model: the base with its LM head and the global-stage LoRA, at init."""
        device = with_precision(device, spec.base_model)
        path = model_dir(spec, model_root)
        kind = global_stage.lm_kind(spec, path)
        lora = global_stage.global_lora_spec(spec)
        key = json.dumps(
            [
                str(path.resolve()),
                kind,
                lora.model_dump(),
                spec.seed,
                str(device.device),
                str(device.train_dtype),
            ]
        )
        kept = self.lm_models.get(key)
        if kept is not None:
            kept[0].reset()
            return kept
        self._check_digest(spec, path)
        self.lm_models.clear()
        return self.lm_models.put(key, (global_stage.build_lm(spec, path, kind, device), kind))

    def merged_backbone(
        self, spec: ExperimentSpec, model_root: Path, base_adapter_path: Path, device: DeviceChoice
    ) -> tuple[str, dict[str, torch.Tensor]]:
        """(digest of the global version's file, the backbone with that version's LoRA merged in)."""
        digest = file_sha256(base_adapter_path)
        lora = global_stage.global_lora_spec(spec)
        key = json.dumps([digest, spec.base_model.model_dump(), lora.model_dump(), spec.seed])
        kept = self.merged_backbones.get(key)
        if kept is not None:
            return kept
        path = model_dir(spec, model_root)
        self._check_digest(spec, path)
        fresh = global_stage.build_lm(spec, path, global_stage.lm_kind(spec, path), device)  # merged away
        state = global_stage.merged_backbone(fresh, read_global(base_adapter_path))
        self.merged_backbones.clear()
        return self.merged_backbones.put(key, (digest, state))

    def clear(self) -> None:
        """Forget every kept model (the next task loads from disk)."""
        self.task_models.clear()
        self.lm_models.clear()
        self.merged_backbones.clear()

    def _check_digest(self, spec: ExperimentSpec, path: Path) -> None:
        check_digest(spec, path, self._sha256)

    def _sha256(self, weights: Path) -> str:
        if weights not in self.weights_sha256:
            self.weights_sha256[weights] = file_sha256(weights)
        return self.weights_sha256[weights]


__all__ = ["ModelFactory"]
