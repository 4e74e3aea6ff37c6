"""Build tokenizer + base model + PEFT adapter from the spec, and move trainable tensors in and out.

Trainable tensors travel as ``dict[str, np.ndarray]`` (float32) keyed exactly by peft's
``get_peft_model_state_dict`` names, so a version written as ``adapter_model.safetensors`` next to
``adapter_config.json`` loads with ``PeftModel.from_pretrained(base, folder)``. Tensors that are
frozen by the method (FFA-LoRA's ``lora_A``) are not exchanged: every site rebuilds them from the
spec's seed.

This module builds; it keeps nothing. The daemon's `ModelFactory` (worker/model_factory.py) keeps the
last built model, so later tasks of the same experiment reset the adapter to its initial state instead
of reloading the base model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel, get_peft_model, get_peft_model_state_dict
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import ExperimentSpec, site_path_problem
from worker import precision
from worker.device import DeviceChoice
from worker.methods import BuildContext, get_method

PROMPT_KEY = "prompt_embeddings"  # peft's saved name for prompt-learning embeddings
ADAPTER = "default"


@dataclass
class BuiltModel:
    model: PeftModel
    tokenizer: Any
    device: DeviceChoice
    init_state: dict[str, torch.Tensor]  # every adapter tensor at init (CPU copies), for resets

    def reset(self) -> None:
        """Put the adapter back to its initial (seeded) state."""
        with torch.no_grad():
            for name, param in adapter_params(self.model).items():
                param.copy_(self.init_state[name].to(param.device, param.dtype))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


def model_dir(spec: ExperimentSpec, model_root: Path) -> Path:
    """`<model_root>/<base_model.name>`; a name that leads out of the model root is refused.

    Symlinks are followed here (unlike data files): model folders often link to a shared cache.
    """
    problem = site_path_problem(spec.base_model.name)
    if problem is not None:
        raise FedtuneError(ErrorCode.INVALID_SPEC, f"base_model.name {spec.base_model.name!r} {problem}")
    path = Path(model_root) / spec.base_model.name
    if not (path / "config.json").is_file():
        raise FedtuneError(
            ErrorCode.NOT_FOUND,
            f"base model {spec.base_model.name!r} not found: {path} has no config.json (check --model-root)",
        )
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def check_digest(spec: ExperimentSpec, path: Path, sha256: Callable[[Path], str] = file_sha256) -> None:
    """The site's base weights are the ones the spec names (`base_model.sha256`), when it names any.

    `sha256` hashes a file; the model factory passes one that remembers what it hashed.
    """
    want = spec.base_model.sha256
    if not want:
        return
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT, f"base_model.sha256 is set but {weights} does not exist"
        )
    have = sha256(weights)
    if have != want.lower():
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"{weights} has sha256 {have}, the spec expects {want}: this site has a different base model",
        )


def _load_base(spec: ExperimentSpec, path: Path, device: DeviceChoice) -> tuple[Any, torch.nn.Module]:
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    kwargs = precision.load_kwargs(spec.base_model, device)
    if spec.task == "sequence-classification":
        labels = spec.labels or []
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            **kwargs,
        )
    else:  # causal-lm, instruction
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        # Training and scoring need no KV cache, and with one transformers does not keep packed
        # examples apart (worker/instruction.py); generation asks for it explicitly.
        model.config.use_cache = False
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if precision.is_quantized(model):
        model = precision.prepare_quantized(model)
    return tokenizer, model


def build_classifier(
    spec: ExperimentSpec,
    path: Path,
    device: DeviceChoice,
    base_state: dict[str, torch.Tensor] | None = None,
) -> BuiltModel:
    """Tokenizer + PEFT model at the experiment's seeded initial state, on the site's device.

    `path` is the base model's folder (`model_dir`). With `base_state` (a merged global-stage backbone,
    worker/global_stage.py) the base weights are replaced by it before the stage's own adapter is added.
    """
    method = get_method(spec.peft.method)
    ctx = BuildContext(task=spec.task, model_path=str(path), seed=spec.seed)
    with quiet_transformers(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        seed_everything(spec.seed)  # the new task head is drawn here
        tokenizer, base = _load_base(spec, path, device)
        if base_state is not None:
            load_backbone_state(base, base_state)
        seed_everything(spec.seed)  # adapter init does not depend on how much RNG loading used
        model = get_peft_model(base, method.peft_config(spec.peft, ctx))
    method.after_build(model, spec.peft, ctx)
    return ready(model, tokenizer, device)


def ready(model: PeftModel, tokenizer: Any, device: DeviceChoice) -> BuiltModel:
    """Trainable tensors in float32 (autocast handles bf16 compute), on the device, in eval mode, with
    the adapter's initial state kept for resets."""
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    if not precision.is_quantized(model):  # a k-bit base was placed at load time
        model.to(device.device)
    model.eval()
    init_state = {name: p.detach().cpu().clone() for name, p in adapter_params(model).items()}
    return BuiltModel(model=model, tokenizer=tokenizer, device=device, init_state=init_state)


def load_backbone_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a merged backbone into `model`'s backbone; keys the model lacks (a pooler) stay as loaded."""
    backbone = getattr(model, str(model.base_model_prefix))
    result = backbone.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise FedtuneError(
            ErrorCode.BAD_MANIFEST,
            f"the global-stage base does not fit this model: unexpected {result.unexpected_keys[:5]}",
        )


def adapter_params(model: PeftModel) -> dict[str, torch.nn.Parameter]:
    """Every adapter tensor (peft save name -> the live parameter behind it), trainable or frozen."""
    by_storage = {(p.data_ptr(), tuple(p.shape)): p for p in model.parameters()}
    out: dict[str, torch.nn.Parameter] = {}
    for name, tensor in get_peft_model_state_dict(model, adapter_name=ADAPTER).items():
        param: torch.nn.Parameter | None
        if name == PROMPT_KEY:
            param = model.prompt_encoder[ADAPTER].embedding.weight  # type: ignore[union-attr,assignment]
            if param is None or tuple(param.shape) != tuple(tensor.shape):
                raise FedtuneError(
                    ErrorCode.INVALID_SPEC, f"prompt encoder of {name!r} is not exchangeable as saved"
                )
        else:
            param = by_storage.get((tensor.data_ptr(), tuple(tensor.shape)))
            if param is None:
                raise FedtuneError(
                    ErrorCode.INVALID_SPEC, f"adapter tensor {name!r} has no parameter behind it"
                )
        out[name] = param
    return out


def _exchanged_params(model: PeftModel) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in adapter_params(model).items() if p.requires_grad}


def trainable_arrays(model: PeftModel) -> dict[str, np.ndarray]:
    """The trained tensors (float32, CPU), keyed by peft save names; frozen adapter tensors excluded."""
    return {
        name: p.detach().to("cpu", torch.float32).numpy().copy()
        for name, p in _exchanged_params(model).items()
    }


def frozen_arrays(model: PeftModel) -> dict[str, np.ndarray]:
    """Adapter tensors that are not trained (FFA-LoRA's lora_A): needed only to export a full adapter."""
    return {
        name: p.detach().to("cpu", torch.float32).numpy().copy()
        for name, p in adapter_params(model).items()
        if not p.requires_grad
    }


def trainable_shapes(model: PeftModel) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in _exchanged_params(model).items()}


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def load_trainable_arrays(model: PeftModel, arrays: dict[str, np.ndarray]) -> None:
    """Write a version's tensors into the model; names and shapes must match the trained set exactly."""
    params = _exchanged_params(model)
    missing = sorted(set(params) - set(arrays))
    unexpected = sorted(set(arrays) - set(params))
    mismatched = [
        f"{name} {tuple(arrays[name].shape)} != {tuple(params[name].shape)}"
        for name in sorted(set(params) & set(arrays))
        if tuple(arrays[name].shape) != tuple(params[name].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch {len(mismatched)}: {_listing(mismatched)}")
    if problems:
        raise FedtuneError(
            ErrorCode.BAD_MANIFEST,
            "the model version does not fit this experiment's adapter: " + "; ".join(problems),
        )
    bad = [name for name, arr in arrays.items() if not np.all(np.isfinite(arr))]
    if bad:
        raise FedtuneError(ErrorCode.NON_FINITE, f"the model version has NaN/Inf in {_listing(sorted(bad))}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(
                torch.from_numpy(np.asarray(arrays[name], dtype=np.float32)).to(param.device, param.dtype)
            )


def adapter_config_dict(model: PeftModel, base_model_name: str | None = None) -> dict[str, Any]:
    config = model.peft_config[ADAPTER].to_dict()
    for key, value in config.items():
        if isinstance(value, set):
            config[key] = sorted(value)
        elif hasattr(value, "value") and not isinstance(value, (str, int, float, bool)):
            config[key] = value.value  # enums (peft_type, task_type)
    config["inference_mode"] = True
    if base_model_name is not None:
        config["base_model_name_or_path"] = base_model_name
    return config


def adapter_config_json(model: PeftModel, base_model_name: str | None = None) -> bytes:
    """adapter_config.json as peft's save_pretrained writes it (loadable by PeftModel.from_pretrained)."""
    return json.dumps(
        adapter_config_dict(model, base_model_name), indent=2, sort_keys=True, default=str
    ).encode()
