"""The base model's precision on this site: `base_model.dtype` and `base_model.quantization`.

dtype picks the load dtype of the frozen base weights and the autocast dtype of the forward pass
(trained tensors stay float32, worker/model.py `ready`). auto keeps the device's choice: bf16 on a CUDA
GPU that supports it, float32 otherwise. fp16 needs CUDA (CPU kernels for it are slow or missing, and
training in fp16 needs a gradient scaler, which only CUDA has); bf16 runs on a CPU too, slowly.

quantization (QLoRA, Dettmers et al. 2023) loads the base through bitsandbytes in 4-bit NF4 with double
quantization, or in 8-bit, and prepares it with peft's `prepare_model_for_kbit_training`. bitsandbytes'
k-bit kernels need a CUDA GPU: a site without one, or without the bitsandbytes package, refuses the task
with UNAVAILABLE and the reason, which the coordinator shows as the task's error.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any

import torch

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import BaseModelSpec
from worker.device import DeviceChoice

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def with_precision(device: DeviceChoice, base: BaseModelSpec) -> DeviceChoice:
    """`device` with the spec's compute dtype; refuses what this site cannot run."""
    cuda = device.device.type == "cuda"
    if base.quantization != "none":
        check_quantization_available(base, device)
    if base.dtype == "auto":
        return device
    dtype = DTYPES[base.dtype]
    if dtype == torch.float16 and not cuda:
        raise FedtuneError(
            ErrorCode.UNAVAILABLE,
            f"base_model.dtype fp16 needs a CUDA GPU; this site runs on {device.device.type}. "
            "Use bf16 or fp32 (or auto) for sites without a GPU",
        )
    if dtype == torch.bfloat16 and cuda and not device.info.get("bf16", False):
        raise FedtuneError(
            ErrorCode.UNAVAILABLE,
            f"base_model.dtype bf16 is not supported by this site's GPU ({device.info.get('name', '?')}); "
            "use fp16 or auto",
        )
    return dataclasses.replace(device, train_dtype=dtype)


def check_quantization_available(base: BaseModelSpec, device: DeviceChoice) -> None:
    """A k-bit base needs a CUDA device and the bitsandbytes package; say which is missing."""
    if device.device.type != "cuda":
        raise FedtuneError(
            ErrorCode.UNAVAILABLE,
            f"base_model.quantization {base.quantization} (QLoRA through bitsandbytes) needs a CUDA GPU; "
            f"this site runs on {device.device.type}. Run the experiment on GPU sites, or set "
            "base_model.quantization: none",
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise FedtuneError(
            ErrorCode.UNAVAILABLE,
            f"base_model.quantization {base.quantization} needs the bitsandbytes package on this site: "
            "pip install 'fedtune[gpu]' (or bitsandbytes) into the worker's environment",
        )


def quantization_config(base: BaseModelSpec, device: DeviceChoice) -> Any | None:
    """transformers' BitsAndBytesConfig for the spec, or None for a full-precision base."""
    if base.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if base.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=device.train_dtype,
    )


def load_kwargs(base: BaseModelSpec, device: DeviceChoice) -> dict[str, Any]:
    """Keyword arguments for `from_pretrained`: the dtype, and for a k-bit base its quantization
    config and device map (a quantized model is placed at load time; `.to()` is refused for it)."""
    dtype = device.train_dtype if device.autocast else torch.float32
    quantization = quantization_config(base, device)
    if quantization is None:
        return {"dtype": dtype}
    return {"dtype": dtype, "quantization_config": quantization, "device_map": {"": device.device}}


def is_quantized(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def prepare_quantized(model: torch.nn.Module) -> torch.nn.Module:
    """peft's k-bit preparation (norms and head in float32, input gradients on); gradient
    checkpointing is left to `training.gradient_checkpointing`."""
    from peft import prepare_model_for_kbit_training

    prepared: torch.nn.Module = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
        model, use_gradient_checkpointing=False
    )
    return prepared
