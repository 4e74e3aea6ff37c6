"""Small helpers shared by the worker tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedtune.spec import ExperimentSpec
from fedtune.tensorstream.safetensors_file import write_safetensors
from worker.device import DeviceChoice, select_device
from worker.evaluation import evaluate
from worker.model import BuiltModel, load_trainable_arrays
from worker.model_factory import ModelFactory
from worker.task_io import read_global


def write_global(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    write_safetensors(path, arrays)
    return path


def quiet(_: str) -> None:
    return None


def build_model(
    spec: ExperimentSpec,
    model_root: Path,
    *,
    models: ModelFactory | None = None,
    device: DeviceChoice | None = None,
    base_adapter_path: Path | None = None,
) -> BuiltModel:
    """A model as a task gets it: from `models` (kept between calls) or, without one, freshly built."""
    factory = models if models is not None else ModelFactory()
    return factory.model(spec, model_root, device or select_device(), base_adapter_path)


def evaluate_version(
    spec: ExperimentSpec, global_path: Path, data_root: Path, model_root: Path
) -> dict[str, Any]:
    """Eval-split metrics of a version's tensors (what a train task reports after training)."""
    from worker.data import data_file, load_examples

    built = build_model(spec, model_root)
    load_trainable_arrays(built.model, read_global(global_path))
    labelled = spec.task == "sequence-classification"
    assert spec.data.eval is not None
    examples = load_examples(
        data_file(data_root, spec.data.eval),
        text_field=spec.data.text_field,
        label_field=spec.data.label_field if labelled else None,
        labels=spec.labels if labelled else None,
    )
    training = spec.training_for(0)
    return evaluate(
        built.model,
        built.tokenizer,
        examples,
        task=spec.task,
        device=built.device,
        batch_size=max(training.batch_size, 32),
        max_length=training.max_length,
    )
