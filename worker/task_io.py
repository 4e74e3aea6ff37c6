"""What a task reads and returns: the global model's tensors in, a `TaskOutput` out.

Shared by the entry points in worker/tasks.py and worker/global_stage.py, and by the transfers that
ship an output (worker/uploads.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedtune.compression.encoding import UpdateEncoding
from fedtune.errors import ErrorCode, FedtuneError


@dataclass
class TaskOutput:
    arrays: dict[str, np.ndarray]  # trainable tensors, float32 (empty for metrics-only tasks)
    num_examples: int
    metrics: dict[str, float]  # e.g. train_loss, eval_accuracy, eval_loss, train_seconds
    files: dict[str, bytes] = field(default_factory=dict)  # side files, e.g. adapter_config.json for INIT
    # A compressed update (worker/compression.py): `arrays` are the encoded tensors, `dtypes` names the
    # wire dtype where numpy's differs (bfloat16 bits travel as uint16).
    encoding: UpdateEncoding = field(default_factory=UpdateEncoding)
    dtypes: dict[str, str] = field(default_factory=dict)


def read_global(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a downloaded model version (float32 numpy arrays keyed by peft save names)."""
    if not Path(path).is_file():
        raise FedtuneError(ErrorCode.NOT_FOUND, f"global model file {path} does not exist")
    from fedtune.tensorstream.safetensors_file import read_arrays_float32

    return read_arrays_float32(Path(path))


__all__ = ["TaskOutput", "read_global"]
