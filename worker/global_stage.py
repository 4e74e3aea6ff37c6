"""The `global` stage on a site: a LoRA on the base model trained with the LM objective, and the merged
base that later stages build on (docs/decisions.md 11).

The global-stage adapter is `spec.peft` when that is LoRA, else a default LoRA (r=8 on peft's default
targets, the attention projections). Encoders are trained as masked LMs (AutoModelForMaskedLM; a head
missing from the checkpoint is drawn from `spec.seed`, so every site has the same one, and stays
frozen), decoders as causal LMs. Later stages get the last global version's tensors
(`base_adapter_path`): `merged_backbone` takes the same LoRA with them loaded, merges it into the base
weights (`merge_and_unload`) and returns the backbone's state dict. Nothing is cached here: the
daemon's `ModelFactory` (worker/model_factory.py) keeps built models and the merged backbone.
`run_train` is the global stage's train task (worker/tasks.py dispatches to it with a built model).
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import ExperimentSpec, LoraSpec, TrainingSpec
from worker.data import Example, data_file, load_examples
from worker.device import DeviceChoice
from worker.lm import LmKind, encode_lm_batch, lm_eval_loss
from worker.methods import BuildContext, get_method
from worker.model import BuiltModel, load_trainable_arrays, quiet_transformers, ready, seed_everything
from worker.task_io import TaskOutput, read_global
from worker.training import train, update_to_send

DEFAULT_GLOBAL_LORA = LoraSpec(r=8, alpha=16.0, dropout=0.05, target_modules=None)


def global_lora_spec(spec: ExperimentSpec) -> LoraSpec:
    return spec.peft if isinstance(spec.peft, LoraSpec) else DEFAULT_GLOBAL_LORA


def lm_kind(spec: ExperimentSpec, path: Path) -> LmKind:
    """Masked LM for encoder architectures (those with a masked-LM class), causal LM otherwise."""
    if spec.task in ("causal-lm", "instruction"):
        return "causal"
    model_type = AutoConfig.from_pretrained(path).model_type
    return "masked" if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "causal"


def loss_key(kind: LmKind) -> str:
    return "eval_mlm_loss" if kind == "masked" else "eval_clm_loss"


def build_lm(spec: ExperimentSpec, path: Path, kind: LmKind, device: DeviceChoice) -> BuiltModel:
    """The base model (folder `path`) with its LM head and the global-stage LoRA, at the seeded
    initial state."""
    lora = global_lora_spec(spec)
    with quiet_transformers(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        seed_everything(spec.seed)  # a head missing from the checkpoint is drawn here, the same everywhere
        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if kind == "masked" and tokenizer.mask_token_id is None:
            raise FedtuneError(
                ErrorCode.INVALID_SPEC,
                f"{spec.base_model.name}: the tokenizer has no mask token for masked LM",
            )
        dtype = device.train_dtype if device.autocast else torch.float32
        auto = AutoModelForMaskedLM if kind == "masked" else AutoModelForCausalLM
        base = auto.from_pretrained(path, dtype=dtype)
        if base.config.pad_token_id is None:
            base.config.pad_token_id = tokenizer.pad_token_id
        seed_everything(spec.seed)
        config = LoraConfig(
            task_type=TaskType.CAUSAL_LM if kind == "causal" else None,
            r=lora.r,
            lora_alpha=lora.alpha,  # type: ignore[arg-type]
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
        )
        model = get_peft_model(base, config)  # freezes everything else, the LM head included
    ctx = BuildContext(task=spec.task, model_path=str(path), seed=spec.seed)
    get_method("lora").after_build(model, lora, ctx)  # FFA-LoRA: seeded frozen A
    return ready(model, tokenizer, device)


def merged_backbone(built: BuiltModel, global_arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The backbone's state dict with a global version's LoRA merged into its weights (CPU copies).

    `built` is a fresh `build_lm` model: merging changes it for good, so it must not be a kept one.
    """
    load_trainable_arrays(built.model, global_arrays)
    merged = built.model.merge_and_unload()
    backbone = getattr(merged, merged.base_model_prefix)
    return {k: v.detach().to("cpu").clone() for k, v in backbone.state_dict().items()}


# ----------------------------------------------------------------------------- task entry point
def run_train(
    built: BuiltModel,
    kind: LmKind,
    spec: ExperimentSpec,
    training: TrainingSpec,
    round: int,
    global_path: Path,
    data_root: Path,
    *,
    site: str,
    progress: Callable[[str], None],
    rounds: int = 1,
) -> TaskOutput:
    """A global-stage round: the LM LoRA (`built`, from the model factory) trained on the site's
    unlabelled text.

    Metrics: train_loss, eval_mlm_loss (eval_clm_loss for decoders) on the eval split's text with
    seeded masks, and in round 1 base_eval_mlm_loss, the same loss of the untouched base.
    """
    examples = unlabelled_examples(spec, data_root)
    evals = eval_texts(spec, data_root)
    global_arrays = read_global(global_path)
    load_trainable_arrays(built.model, global_arrays)
    key = loss_key(kind)
    metrics: dict[str, float] = {}
    if evals and round <= 1:
        with built.model.disable_adapter():
            metrics["base_" + key] = eval_loss(built, kind, evals, spec, training)
    result = train(
        built.model,
        built.tokenizer,
        examples,
        task=spec.task,
        training=training,
        device=built.device,
        round=round,
        rounds=rounds,
        site=site,
        progress=progress,
        encode=train_encoder(built, kind, training, round, site),
    )
    metrics.update(result.metrics())
    arrays, privacy_metrics = update_to_send(built.model, global_arrays, spec.privacy)
    metrics.update(privacy_metrics)
    if evals:
        metrics[key] = eval_loss(built, kind, evals, spec, training)
    return TaskOutput(arrays=arrays, num_examples=result.num_examples, metrics=metrics)


def _texts(path: Path, spec: ExperimentSpec) -> list[Example]:
    return load_examples(path, text_field=spec.data.text_field)


def unlabelled_examples(spec: ExperimentSpec, data_root: Path) -> list[Example]:
    return _texts(data_file(data_root, spec.data.unlabelled or spec.data.train), spec)


def eval_texts(spec: ExperimentSpec, data_root: Path) -> list[Example] | None:
    if spec.data.eval is None:
        return None
    path = data_file(data_root, spec.data.eval)
    return _texts(path, spec) if path.is_file() else None


def eval_loss(
    built: BuiltModel, kind: LmKind, examples: list[Example], spec: ExperimentSpec, t: TrainingSpec
) -> float:
    return lm_eval_loss(
        built.model,
        built.tokenizer,
        examples,
        kind=kind,
        device=built.device,
        seed=spec.seed,
        batch_size=max(t.batch_size, 32),
        max_length=t.max_length,
    )


def train_encoder(
    built: BuiltModel, kind: LmKind, training: TrainingSpec, round: int, site: str
) -> Callable[[Any], dict[str, torch.Tensor]]:
    """The training batch encoder: masks drawn from a generator seeded by (seed, round, site)."""
    rng = np.random.default_rng([training.seed, round, zlib.crc32(site.encode()), 1])
    generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
    return lambda examples: encode_lm_batch(
        built.tokenizer, examples, kind, training.max_length, built.device.device, generator
    )
