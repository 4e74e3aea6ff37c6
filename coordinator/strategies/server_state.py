"""Per-tensor server state (momentum, Adam moments) persisted between rounds as a safetensors file.

The file holds one float32 tensor ``<buffer>.<tensor name>`` per buffer and trainable tensor
(e.g. ``m.lora_A``, ``v.lora_A``), so it is inspectable with any safetensors reader and a
restarted coordinator continues the optimiser exactly. During a round the previous state is copied
into a raw float32 file in the workdir, so finishing reads it at any offset with O(chunk) memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from coordinator.strategies.flatfile import FlatFile
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.manifest import Manifest, TensorSpec
from fedtune.tensorstream.safetensors_file import SafetensorsFileWriter, iter_float32, read_header

CHUNK_ELEMENTS = 262144


def state_manifest(manifest: Manifest, buffer_names: tuple[str, ...]) -> Manifest:
    return Manifest.of(
        [
            TensorSpec(f"{buffer}.{t.name}", "float32", t.shape, t.numel * 4)
            for buffer in buffer_names
            for t in manifest.tensors
        ]
    )


class ServerState:
    """Buffers named in `initial` (name -> value they start from before the first round)."""

    def __init__(self, workdir: Path, manifest: Manifest, initial: dict[str, float]) -> None:
        self.initial = initial
        self.buffer_names = tuple(initial)
        self.numel = sum(t.numel for t in manifest.tensors)
        self.manifest = state_manifest(manifest, self.buffer_names)
        self._previous = FlatFile(
            Path(workdir) / "server-state-previous.f32", self.numel * len(initial), np.float32
        )
        self._loaded = False

    def load(self, state_path: Path | None) -> None:
        """Copy the previous round's state file into the workdir (None: start from `initial`)."""
        self._previous.unlink()
        self._loaded = False
        if state_path is None:
            return
        found, _ = read_header(state_path)
        if not found.same_layout(self.manifest):
            raise FedtuneError(
                ErrorCode.BAD_MANIFEST,
                f"server state {state_path} does not match this round's tensors (expected "
                f"{len(self.manifest.tensors)} float32 tensors {self.manifest.names[:3]}...); "
                "was the strategy or model changed mid-stage?",
            )
        self._previous.create()
        for start, values in iter_float32(state_path, CHUNK_ELEMENTS):
            self._previous.write(start, values)
        self._loaded = True

    def read(self, start: int, count: int) -> dict[str, np.ndarray]:
        """float64 chunks of every buffer at flat elements [start, start + count)."""
        if not self._loaded:
            return {name: np.full(count, value, dtype=np.float64) for name, value in self.initial.items()}
        return {
            name: self._previous.read(i * self.numel + start, count).astype(np.float64)
            for i, name in enumerate(self.buffer_names)
        }

    def open_writer(self, path: Path) -> SafetensorsFileWriter:
        return SafetensorsFileWriter(path, self.manifest, metadata={"format": "fedtune-server-state"})

    def write(self, writer: SafetensorsFileWriter, start: int, buffers: dict[str, np.ndarray]) -> None:
        for i, name in enumerate(self.buffer_names):
            writer.write_flat_float32(i * self.numel + start, buffers[name].astype(np.float32))

    def close(self) -> None:
        self._previous.close()
