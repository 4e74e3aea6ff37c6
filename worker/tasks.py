"""The entry points the worker daemon calls: init, train, personalize, dataset sizes.

Each returns a `TaskOutput` (worker/task_io.py); tensors are float32 numpy arrays keyed by peft save
names (see worker/model.py). Models come from `models`, the daemon's `ModelFactory`
(worker/model_factory.py), which keeps them between tasks so later rounds skip loading. A global
stage's train task runs in worker/global_stage.py on the LM model the factory builds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import ExperimentSpec, TrainingSpec
from worker import data as data_files
from worker import global_stage
from worker.class_statistics import class_feature_sums, statistics_update
from worker.data import Example, data_file, load_examples
from worker.device import DeviceChoice, resolve_device
from worker.evaluation import evaluate
from worker.model import (
    BuiltModel,
    adapter_config_json,
    frozen_arrays,
    load_trainable_arrays,
    trainable_arrays,
)
from worker.model_factory import ModelFactory
from worker.task_io import TaskOutput, read_global
from worker.training import train, update_to_send

FROZEN_ADAPTER_FILE = "frozen_adapter.safetensors"


def _examples(spec: ExperimentSpec, path: Path) -> list[Example]:
    labelled = spec.task == "sequence-classification"
    return load_examples(
        path,
        text_field=spec.data.text_field,
        label_field=spec.data.label_field if labelled else None,
        labels=spec.labels if labelled else None,
    )


def _eval_examples(spec: ExperimentSpec, data_root: Path) -> list[Example] | None:
    if spec.data.eval is None:
        return None
    path = data_file(data_root, spec.data.eval)
    return _examples(spec, path) if path.is_file() else None


def _training(spec: ExperimentSpec, stage_index: int, overrides: dict[str, Any] | None) -> TrainingSpec:
    if not 0 <= stage_index < len(spec.stages):
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT, f"stage_index {stage_index} outside 0..{len(spec.stages) - 1}"
        )
    base = spec.training_for(stage_index)
    if not overrides:
        return base
    try:
        return TrainingSpec.model_validate({**base.model_dump(), **overrides})
    except ValueError as err:
        raise FedtuneError(ErrorCode.INVALID_SPEC, f"training overrides {overrides}: {err}") from None


def _is_global(spec: ExperimentSpec, stage_index: int) -> bool:
    return 0 <= stage_index < len(spec.stages) and spec.stages[stage_index].kind == "global"


def _factory(models: ModelFactory | None) -> ModelFactory:
    """The daemon's factory; without one (a script, a test) a model built for this call only."""
    return models if models is not None else ModelFactory()


def _built_with_global(
    models: ModelFactory,
    spec: ExperimentSpec,
    model_root: Path,
    global_path: Path,
    device: str | DeviceChoice | None,
    base_adapter_path: Path | None = None,
) -> tuple[BuiltModel, dict[str, np.ndarray]]:
    built = models.model(spec, model_root, resolve_device(device), base_adapter_path)
    global_arrays = read_global(global_path)
    load_trainable_arrays(built.model, global_arrays)
    return built, global_arrays


def _eval(
    built: BuiltModel,
    spec: ExperimentSpec,
    examples: list[Example],
    training: TrainingSpec,
    prefix: str = "eval_",
) -> dict[str, float]:
    return evaluate(
        built.model,
        built.tokenizer,
        examples,
        task=spec.task,
        device=built.device,
        batch_size=max(training.batch_size, 32),
        max_length=training.max_length,
        prefix=prefix,
    )


def _safetensors_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in arrays.items()})


def run_init(
    spec: ExperimentSpec,
    model_root: Path,
    *,
    models: ModelFactory | None = None,
    device: str | DeviceChoice | None = None,
    stage_index: int = 0,
    base_adapter_path: Path | None = None,
) -> TaskOutput:
    """The seeded initial adapter: its trained tensors plus adapter_config.json.

    With FFA-LoRA, the frozen lora_A tensors are added as `frozen_adapter.safetensors`: they are
    never exchanged, but an exported adapter needs them next to the trained ones. A global stage's
    INIT is its LM LoRA (worker/global_stage.py); `base_adapter_path` (the last global version) builds
    the adapter on the merged base.
    """
    models = _factory(models)
    if _is_global(spec, stage_index):
        built, _ = models.lm_model(spec, model_root, resolve_device(device))
    else:
        built = models.model(spec, model_root, resolve_device(device), base_adapter_path)
    arrays = trainable_arrays(built.model)
    files = {"adapter_config.json": adapter_config_json(built.model, spec.base_model.name)}
    frozen = frozen_arrays(built.model)
    if frozen:
        files[FROZEN_ADAPTER_FILE] = _safetensors_bytes(frozen)
    metrics = {"trainable_parameters": float(sum(a.size for a in arrays.values()))}
    return TaskOutput(arrays=arrays, num_examples=0, metrics=metrics, files=files)


def run_train(
    spec: ExperimentSpec,
    stage_index: int,
    round: int,
    global_path: Path,
    data_root: Path,
    model_root: Path,
    *,
    models: ModelFactory | None = None,
    site: str = "",
    progress: Callable[[str], None] = print,
    training_overrides: dict[str, Any] | None = None,
    device: str | DeviceChoice | None = None,
    base_adapter_path: Path | None = None,
) -> TaskOutput:
    """Train from the global tensors on the site's train split; returns the trained weights (not a delta)."""
    training = _training(spec, stage_index, training_overrides)
    models = _factory(models)
    if _is_global(spec, stage_index):
        lm, kind = models.lm_model(spec, model_root, resolve_device(device))
        return global_stage.run_train(
            lm, kind, spec, training, round, global_path, data_root, site=site, progress=progress
        )
    train_examples = _examples(spec, data_file(data_root, spec.data.train))
    eval_examples = _eval_examples(spec, data_root)
    built, global_arrays = _built_with_global(
        models, spec, model_root, global_path, device, base_adapter_path
    )
    if training.class_statistics:
        return _class_statistics(spec, training, built, global_arrays, train_examples, progress)
    result = train(
        built.model,
        built.tokenizer,
        train_examples,
        task=spec.task,
        training=training,
        device=built.device,
        round=round,
        site=site,
        progress=progress,
    )
    metrics = result.metrics()
    arrays, privacy_metrics = update_to_send(built.model, global_arrays, spec.privacy)
    metrics.update(privacy_metrics)
    if eval_examples:
        metrics.update(_eval(built, spec, eval_examples, training))
    return TaskOutput(arrays=arrays, num_examples=result.num_examples, metrics=metrics)


def _class_statistics(
    spec: ExperimentSpec,
    training: TrainingSpec,
    built: BuiltModel,
    global_arrays: dict[str, np.ndarray],
    examples: list[Example],
    progress: Callable[[str], None],
) -> TaskOutput:
    """A fedncm round (docs/decisions.md 19): class feature sums and counts instead of training."""
    head = training.class_statistics or ""
    if spec.task != "sequence-classification":
        raise FedtuneError(
            ErrorCode.INVALID_SPEC, "class statistics (fedncm) need a sequence-classification task"
        )
    sums, counts = class_feature_sums(
        built.model,
        built.tokenizer,
        examples,
        head=head,
        num_classes=len(spec.labels or []),
        device=built.device,
        batch_size=max(training.batch_size, 32),
        max_length=training.max_length,
        progress=progress,
    )
    arrays = statistics_update(global_arrays, sums, counts, head)
    metrics = {
        "class_statistics_examples": float(counts.sum()),
        "class_statistics_classes": float((counts > 0).sum()),
    }
    return TaskOutput(arrays=arrays, num_examples=len(examples), metrics=metrics)


def run_personalize(
    spec: ExperimentSpec,
    stage_index: int,
    global_path: Path,
    data_root: Path,
    model_root: Path,
    *,
    out_dir: Path,
    models: ModelFactory | None = None,
    site: str = "",
    progress: Callable[[str], None] = print,
    device: str | DeviceChoice | None = None,
    base_adapter_path: Path | None = None,
) -> TaskOutput:
    """Tune the global adapter on local data, keep it in `out_dir`, report global vs personal metrics."""
    training = _training(spec, stage_index, None)
    train_examples = _examples(spec, data_file(data_root, spec.data.train))
    eval_examples = _eval_examples(spec, data_root)
    built, _ = _built_with_global(_factory(models), spec, model_root, global_path, device, base_adapter_path)
    metrics: dict[str, float] = {}
    if eval_examples:
        metrics.update(_eval(built, spec, eval_examples, training, prefix="global_eval_"))
    result = train(
        built.model,
        built.tokenizer,
        train_examples,
        task=spec.task,
        training=training,
        device=built.device,
        round=0,
        site=site,
        progress=progress,
    )
    metrics.update(result.metrics())
    if eval_examples:
        metrics.update(_eval(built, spec, eval_examples, training, prefix="personal_eval_"))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    built.model.save_pretrained(str(out_dir))
    (out_dir / "adapter_config.json").write_bytes(adapter_config_json(built.model, spec.base_model.name))
    return TaskOutput(arrays={}, num_examples=result.num_examples, metrics=metrics)


def dataset_sizes(data_root: Path) -> dict[str, int]:
    """Examples per *.jsonl / *.csv file in data_root (for the worker's registration)."""
    return data_files.dataset_sizes(data_root)


__all__ = [
    "FROZEN_ADAPTER_FILE",
    "dataset_sizes",
    "run_init",
    "run_personalize",
    "run_train",
]
