"""The entry points the worker daemon calls: init, train, personalize, dataset sizes.

Each returns a `TaskOutput` (worker/task_io.py); tensors are float32 numpy arrays keyed by peft save
names (see worker/model.py). Models come from `models`, the daemon's `ModelFactory`
(worker/model_factory.py), which keeps them between tasks so later rounds skip loading. A global
stage's train task runs in worker/global_stage.py on the LM model the factory builds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import ExperimentSpec, GenerateSpec, TrainingSpec
from worker import data as data_files
from worker import generation, global_stage, instruction
from worker.class_statistics import class_feature_sums, statistics_update
from worker.data import Example, check_data_paths, data_file, load_conversations, load_examples
from worker.device import DeviceChoice, resolve_device
from worker.dp_sgd import train_dp_sgd
from worker.evaluation import evaluate
from worker.memory import peak_rss
from worker.model import (
    BuiltModel,
    adapter_config_json,
    frozen_arrays,
    load_trainable_arrays,
    trainable_arrays,
)
from worker.model_factory import ModelFactory
from worker.privacy import reported_metrics
from worker.ranks import RankGroup
from worker.site_rank import SiteLora, site_lora
from worker.task_io import TaskOutput, read_global
from worker.training import TrainResult, train, update_to_send

FROZEN_ADAPTER_FILE = "frozen_adapter.safetensors"


def _examples(spec: ExperimentSpec, path: Path) -> list[Example]:
    labelled = spec.task == "sequence-classification"
    return load_examples(
        path,
        text_field=spec.data.text_field,
        label_field=spec.data.label_field if labelled else None,
        labels=spec.labels if labelled else None,
    )


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
    lora: SiteLora | None = None,
) -> tuple[BuiltModel, dict[str, np.ndarray]]:
    """The model at the global version's tensors; with `lora` at the site's rank, from the global's top
    components. Returns the global version's tensors (whole)."""
    lora = lora or SiteLora(spec, None)
    built = models.model(lora.spec, model_root, resolve_device(device), base_adapter_path)
    global_arrays = read_global(global_path)
    load_trainable_arrays(built.model, lora.slice(global_arrays))
    return built, global_arrays


@dataclass
class _SiteData:
    """A task's data as its kind needs it: training items, their batch encoder (None: the default
    `encode_batch`), figures about the data, and the held-out evaluation."""

    task: str
    train: Sequence[Any]
    encode: Callable[[list[Any]], dict[str, torch.Tensor]] | None
    metrics: dict[str, float]
    held_out: Sequence[Any] | None
    # instruction with `evaluation.generate`: held-out prompts and references, and the settings
    prompts: Sequence[generation.GenerationExample] = ()
    generate: GenerateSpec | None = None

    def evaluate(self, built: BuiltModel, training: TrainingSpec, prefix: str) -> dict[str, float]:
        if not self.held_out:
            return {}
        batch_size = max(training.batch_size, 32)
        if isinstance(self.held_out[0], Example):
            return evaluate(
                built.model,
                built.tokenizer,
                self.held_out,
                task=self.task,
                device=built.device,
                batch_size=batch_size,
                max_length=training.max_length,
                prefix=prefix,
            )
        metrics = instruction.evaluate_loss(
            built.model,
            self.held_out,
            pad_token_id=int(built.tokenizer.pad_token_id),
            device=built.device,
            batch_size=batch_size,
            prefix=prefix,
        )
        if self.generate is not None and self.prompts:
            metrics.update(
                generation.generation_metrics(
                    built.model,
                    built.tokenizer,
                    self.prompts,
                    self.generate,
                    device=built.device,
                    prefix=prefix,
                )
            )
        return metrics


def _site_data(spec: ExperimentSpec, built: BuiltModel, data_root: Path, training: TrainingSpec) -> _SiteData:
    train_path = data_file(data_root, spec.data.train)
    eval_path = data_file(data_root, spec.data.eval) if spec.data.eval is not None else None
    if eval_path is not None and not eval_path.is_file():
        eval_path = None
    if spec.task != "instruction":
        held_out = _examples(spec, eval_path) if eval_path is not None else None
        return _SiteData(spec.task, _examples(spec, train_path), None, {}, held_out)
    tokenizer = built.tokenizer
    train_set = instruction.prepare(tokenizer, load_conversations(train_path), training.max_length)
    eval_conversations = load_conversations(eval_path) if eval_path is not None else []
    eval_set = (
        instruction.prepare(tokenizer, eval_conversations, training.max_length)
        if eval_conversations
        else None
    )
    settings = spec.evaluation.generate
    prompts = (
        generation.generation_examples(
            tokenizer, eval_conversations, limit=settings.examples, max_length=training.max_length
        )
        if settings is not None
        else []
    )
    pad_id, device, packing = int(tokenizer.pad_token_id), built.device.device, training.packing

    def encode(chats: list[Any]) -> dict[str, torch.Tensor]:
        return instruction.collate(chats, pad_id, device, packing=packing)

    metrics = train_set.metrics()
    if eval_set is not None:
        metrics.update(eval_set.metrics("eval_"))
    held_out_chats = eval_set.examples if eval_set is not None else None
    return _SiteData(spec.task, train_set.examples, encode, metrics, held_out_chats, prompts, settings)


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
    max_lora_rank: int | None = None,
    ranks: RankGroup | None = None,
    sites_in_round: int | None = None,
) -> TaskOutput:
    """Train from the global tensors on the site's train split; returns the trained weights (not a delta).

    A site of lower LoRA rank (`peft.site_ranks`, `max_lora_rank`) trains the global's top components
    and returns its factors zero-padded to the global layout (worker/site_rank.py).
    With `ranks` (one of a site's training processes, worker/rank_main.py), this process trains its
    shard in DDP; rank 0 then evaluates and returns the update, the others return their metrics only.
    `sites_in_round`: a secure-aggregation round's selected sites, for this site's share of site-level
    DP noise (worker/privacy.py).
    """
    check_data_paths(spec.data, data_root)  # a hostile spec is refused before the model is even loaded
    training = _training(spec, stage_index, training_overrides)
    models = _factory(models)
    if _is_global(spec, stage_index):
        lm, kind = models.lm_model(spec, model_root, resolve_device(device))
        return _as_reported(
            spec,
            global_stage.run_train(
                lm,
                kind,
                spec,
                training,
                round,
                global_path,
                data_root,
                site=site,
                progress=progress,
                rounds=spec.stages[stage_index].rounds,
            ),
        )
    lora = site_lora(spec, stage_index, site, max_lora_rank)
    if training.class_statistics:
        lora = SiteLora(spec, None)  # no training: the statistics need the full global as it is
    if lora.rank is not None:
        progress(f"trains LoRA rank {lora.rank} of the global rank {spec.peft.r}")  # type: ignore[union-attr]
    built, global_arrays = _built_with_global(
        models, spec, model_root, global_path, device, base_adapter_path, lora
    )
    site_data = _site_data(spec, built, data_root, training)
    if training.class_statistics:
        return _class_statistics(spec, training, built, global_arrays, list(site_data.train), progress)
    with peak_rss() as memory:
        result, dp_figures = _local_training(
            spec, built, site_data, training, round, spec.stages[stage_index].rounds, site, progress, ranks
        )
        metrics = {**result.metrics(), **site_data.metrics, **lora.metrics(), **dp_figures}
        if ranks is not None:
            metrics["training_processes"] = float(ranks.world_size)
            if not ranks.is_main:
                return TaskOutput(arrays={}, num_examples=result.num_examples, metrics=metrics)
        arrays, privacy_metrics = update_to_send(
            built.model, lora.slice(global_arrays), spec.privacy, sites_in_round
        )
        metrics.update(privacy_metrics)
        metrics.update(site_data.evaluate(built, training, "eval_"))
    metrics.update(memory.metrics())
    output = TaskOutput(
        arrays=lora.embed(arrays, global_arrays), num_examples=result.num_examples, metrics=metrics
    )
    return _as_reported(spec, output)


def _local_training(
    spec: ExperimentSpec,
    built: BuiltModel,
    site_data: _SiteData,
    training: TrainingSpec,
    round: int,
    rounds: int,
    site: str,
    progress: Callable[[str], None],
    ranks: RankGroup | None = None,
) -> tuple[TrainResult, dict[str, float]]:
    """A round's local training: DP-SGD under record-level DP (with its accounting figures), else the
    plain loop (on this process's shard when it is one of several, `ranks`)."""
    dp = spec.privacy.dp
    if dp is not None and dp.level == "record":
        if ranks is not None:  # trains_on_ranks keeps record-level DP in one process
            raise FedtuneError(ErrorCode.WRONG_STATE, "record-level DP trains in one process, not on ranks")
        return train_dp_sgd(
            built.model,
            built.tokenizer,
            site_data.train,
            task=spec.task,
            training=training,
            dp=dp,
            device=built.device,
            round=round,
            rounds=rounds,
            progress=progress,
        )
    result = train(
        built.model,
        built.tokenizer,
        site_data.train,
        task=spec.task,
        training=training,
        device=built.device,
        round=round,
        rounds=rounds,
        site=site,
        progress=progress,
        encode=site_data.encode,
        ranks=ranks,
    )
    return result, {}


def _as_reported(spec: ExperimentSpec, out: TaskOutput) -> TaskOutput:
    """The output with its metrics as `privacy.report_metrics` lets them leave the site."""
    out.metrics = reported_metrics(out.metrics, spec.privacy, out.num_examples)
    return out


def trains_on_ranks(spec: ExperimentSpec, stage_index: int) -> bool:
    """Whether a train task of this stage can run on several processes (worker/launcher.py): the local
    training of a fine-tuning stage. A global stage's LM training, a fedncm statistics round and
    record-level DP-SGD (Opacus' per-record gradients, docs/decisions.md 36) run in the daemon's own
    process (docs/decisions.md 38)."""
    if _is_global(spec, stage_index) or not 0 <= stage_index < len(spec.stages):
        return False
    dp = spec.privacy.dp
    if dp is not None and dp.level == "record":
        return False
    return not spec.training_for(stage_index).class_statistics


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
    max_lora_rank: int | None = None,
) -> TaskOutput:
    """Tune the global adapter on local data, keep it in `out_dir`, report global vs personal metrics.
    A site of lower LoRA rank tunes (and keeps) the global's top components at its rank."""
    check_data_paths(spec.data, data_root)
    training = _training(spec, stage_index, None)
    lora = site_lora(spec, stage_index, site, max_lora_rank)
    if lora.rank is not None:
        progress(f"tunes LoRA rank {lora.rank} of the global rank {spec.peft.r}")  # type: ignore[union-attr]
    built, _ = _built_with_global(
        _factory(models), spec, model_root, global_path, device, base_adapter_path, lora
    )
    site_data = _site_data(spec, built, data_root, training)
    with peak_rss() as memory:
        metrics = site_data.evaluate(built, training, "global_eval_")
        result = train(
            built.model,
            built.tokenizer,
            site_data.train,
            task=spec.task,
            training=training,
            device=built.device,
            round=0,
            site=site,
            progress=progress,
            encode=site_data.encode,
        )
        metrics.update(result.metrics())
        metrics.update(lora.metrics())
        metrics.update(site_data.metrics)
        metrics.update(site_data.evaluate(built, training, "personal_eval_"))
    metrics.update(memory.metrics())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    built.model.save_pretrained(str(out_dir))
    (out_dir / "adapter_config.json").write_bytes(adapter_config_json(built.model, spec.base_model.name))
    return _as_reported(spec, TaskOutput(arrays={}, num_examples=result.num_examples, metrics=metrics))


def dataset_sizes(data_root: Path) -> dict[str, int]:
    """Examples per *.jsonl / *.csv file in data_root (for the worker's registration)."""
    return data_files.dataset_sizes(data_root)


__all__ = [
    "FROZEN_ADAPTER_FILE",
    "dataset_sizes",
    "run_init",
    "run_personalize",
    "run_train",
    "trains_on_ranks",
]
