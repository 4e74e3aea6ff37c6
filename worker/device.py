"""Pick the torch device and training dtype for this site: CUDA when present, CPU otherwise."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from fedtune.errors import ErrorCode, FedtuneError

THREADS_ENV = "FEDTUNE_TORCH_THREADS"


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    train_dtype: torch.dtype  # autocast dtype for the forward pass (bf16 on capable GPUs, else float32)
    info: dict[str, Any] = field(default_factory=dict)  # kind, name, memory_bytes, bf16 (for registration)

    @property
    def autocast(self) -> bool:
        """Forward passes run under autocast in `train_dtype` (base_model.dtype bf16 also on a CPU)."""
        return self.train_dtype != torch.float32


def _cpu_memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def _apply_thread_setting() -> None:
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return
    try:
        threads = int(raw)
    except ValueError:
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"{THREADS_ENV}={raw!r} is not an integer") from None
    if threads < 1:
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"{THREADS_ENV} must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def select_device(prefer: str = "auto") -> DeviceChoice:
    """`prefer`: "auto" (CUDA if available), "cuda" (fail if absent), "cpu", or "cuda:N"."""
    if prefer not in ("auto", "cpu") and not prefer.startswith("cuda"):
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT, f"unknown device {prefer!r}; use auto, cpu, cuda or cuda:N"
        )
    want_cuda = prefer.startswith("cuda") or (prefer == "auto" and torch.cuda.is_available())
    if want_cuda:
        if not torch.cuda.is_available():
            raise FedtuneError(
                ErrorCode.UNAVAILABLE, f"device {prefer!r} requested but CUDA is not available"
            )
        device = torch.device(prefer if prefer.startswith("cuda") else "cuda")
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        bf16 = bool(torch.cuda.is_bf16_supported())
        info = {"kind": "cuda", "name": props.name, "memory_bytes": int(props.total_memory), "bf16": bf16}
        return DeviceChoice(torch.device("cuda", index), torch.bfloat16 if bf16 else torch.float32, info)
    _apply_thread_setting()
    info = {
        "kind": "cpu",
        "name": f"cpu ({torch.get_num_threads()} threads)",
        "memory_bytes": _cpu_memory_bytes(),
        "bf16": False,
    }
    return DeviceChoice(torch.device("cpu"), torch.float32, info)


def resolve_device(device: str | DeviceChoice | None) -> DeviceChoice:
    """A `DeviceChoice` as given, else `select_device` of the preference (None: "auto")."""
    if isinstance(device, DeviceChoice):
        return device
    return select_device(device or "auto")
