"""Error feedback for compressed uploads: the part of its update a site did not send, kept for the next.

With top-k (or int8 / bf16 rounding) a site sends C(delta + residual) and keeps
``residual = delta + residual - decoded(C(...))``: over rounds everything it computed reaches the
coordinator, only later (Stich et al. 2018; Karimireddy et al. 2019). The residual is a float32 file
per experiment and stage in the worker's work folder (``<work_dir>/residuals/<experiment>-stage<i>
.safetensors``), written atomically once the update is encoded and before the upload starts, so a
worker restart keeps it. A residual whose layout no longer fits the stage is dropped (logged).

What a restart can cost: when the encoded update never reaches the coordinator (the task is lost or
re-leased), the residual it carried is gone with it; it is never counted twice (docs/decisions.md 40).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fedtune.errors import FedtuneError
from fedtune.tensorstream.safetensors_file import read_arrays, write_safetensors

log = logging.getLogger("fedtune.worker.error_feedback")

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class ResidualStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, experiment_id: str, stage_index: int) -> Path:
        name = _UNSAFE.sub("_", experiment_id)[:100] or "experiment"
        return self.directory / f"{name}-stage{int(stage_index)}.safetensors"

    def load(
        self, experiment_id: str, stage_index: int, layout: Mapping[str, tuple[int, ...]]
    ) -> dict[str, np.ndarray] | None:
        """The stored residual when it has exactly `layout` (names and shapes, float32), else None."""
        path = self.path(experiment_id, stage_index)
        if not path.is_file():
            return None
        try:
            arrays = read_arrays(path)
        except (OSError, FedtuneError) as err:
            log.warning("dropping unreadable residual %s: %s", path, err)
            return None
        if {n: tuple(a.shape) for n, a in arrays.items()} != dict(layout) or any(
            a.dtype != np.float32 for a in arrays.values()
        ):
            log.warning("dropping residual %s: its layout is not the stage's", path)
            return None
        return arrays

    def save(self, experiment_id: str, stage_index: int, residual: Mapping[str, np.ndarray]) -> Path:
        """Atomically replace the stored residual (written to a partial file, fsynced, renamed)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(experiment_id, stage_index)
        write_safetensors(path, {n: np.ascontiguousarray(a, dtype=np.float32) for n, a in residual.items()})
        return path
