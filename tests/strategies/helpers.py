"""Small safetensors rounds for strategy tests: a global version and per-site updates on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coordinator.strategies.base import RoundInputs, RoundResult, Strategy, UpdateInfo
from fedtune.tensorstream.dtypes import from_float32, to_float32
from fedtune.tensorstream.manifest import Manifest
from fedtune.tensorstream.safetensors_file import read_arrays, read_header, write_safetensors

# name -> (wire dtype, shape): every dtype a trainable tensor may have, and an empty tensor
MIXED_LAYOUT: dict[str, tuple[str, tuple[int, ...]]] = {
    "encoder.w": ("float32", (4, 6)),
    "encoder.bias": ("float16", (5,)),
    "lora_B": ("bfloat16", (3, 3)),
    "empty": ("float32", (0, 4)),
}
FLOAT32_LAYOUT: dict[str, tuple[str, tuple[int, ...]]] = {"a": ("float32", (7, 5)), "b": ("float32", (11,))}


def write_tensors(
    path: Path, values: dict[str, np.ndarray], layout: dict[str, tuple[str, tuple[int, ...]]]
) -> Manifest:
    """Write float values narrowed to each tensor's wire dtype (bfloat16 as its uint16 bits)."""
    arrays = {
        name: from_float32(values[name].astype(np.float32), dtype).reshape(shape)
        for name, (dtype, shape) in layout.items()
    }
    return write_safetensors(path, arrays, {name: dtype for name, (dtype, _) in layout.items()})


def read_float64(path: Path) -> dict[str, np.ndarray]:
    manifest, _ = read_header(path)
    dtypes = {t.name: t.dtype for t in manifest.tensors}
    return {
        n: to_float32(raw, dtypes[n]).astype(np.float64).reshape(raw.shape)
        for n, raw in read_arrays(path).items()
    }


def random_values(
    rng: np.random.Generator, layout: dict[str, tuple[str, tuple[int, ...]]], scale: float = 1.0
) -> dict[str, np.ndarray]:
    return {name: scale * rng.standard_normal(shape) for name, (_, shape) in layout.items()}


@dataclass
class RoundFiles:
    inputs: RoundInputs
    updates: list[UpdateInfo]


def make_round(
    workdir: Path,
    rng: np.random.Generator,
    *,
    layout: dict[str, tuple[str, tuple[int, ...]]] = MIXED_LAYOUT,
    global_values: dict[str, np.ndarray] | None = None,
    sites: int = 3,
    round_number: int = 1,
    state_path: Path | None = None,
    state_scalars: dict[str, float] | None = None,
    global_path: Path | None = None,
) -> RoundFiles:
    """A global version (random unless given) and `sites` updates = global + noise, on disk."""
    workdir.mkdir(parents=True, exist_ok=True)
    if global_path is None:
        global_path = workdir / f"global-{round_number}.safetensors"
        write_tensors(global_path, global_values or random_values(rng, layout), layout)
    manifest, _ = read_header(global_path)
    base = read_float64(global_path)
    updates = []
    for i in range(sites):
        path = workdir / f"update-r{round_number}-s{i}.safetensors"
        write_tensors(path, {n: base[n] + 0.1 * rng.standard_normal(base[n].shape) for n in layout}, layout)
        updates.append(
            UpdateInfo(
                path, num_examples=10 * (i + 1), metrics={"eval_accuracy": 0.5 + 0.1 * i}, site=f"site-{i}"
            )
        )
    inputs = RoundInputs(workdir, manifest, global_path, state_path, dict(state_scalars or {}), round_number)
    return RoundFiles(inputs, updates)


def run_round(strategy: Strategy, files: RoundFiles) -> RoundResult:
    """begin_round, weight + fold every update, finish_round."""
    strategy.begin_round(files.inputs)
    for update in files.updates:
        strategy.fold(update, strategy.weight(update, files.inputs))
    return strategy.finish_round()


# a classifier head as peft saves it, next to other adapter tensors of every dtype (fedncm rounds)
HEAD_WEIGHT = "base_model.model.classifier.weight"
HEAD_BIAS = "base_model.model.classifier.bias"
HEAD_LAYOUT: dict[str, tuple[str, tuple[int, ...]]] = {
    "base_model.model.bert.lora_B": ("bfloat16", (3, 3)),
    HEAD_WEIGHT: ("float32", (3, 4)),
    "encoder.bias": ("float16", (5,)),
    HEAD_BIAS: ("float32", (3,)),
}


def write_statistics(path: Path, base: dict[str, np.ndarray], sums: np.ndarray, counts: np.ndarray) -> None:
    """A site's fedncm update: the global tensors with the head holding feature sums and class counts."""
    write_tensors(path, {**base, HEAD_WEIGHT: sums, HEAD_BIAS: counts}, HEAD_LAYOUT)


def make_statistics_round(
    workdir: Path, rng: np.random.Generator, *, sites: int = 3, round_number: int = 1
) -> RoundFiles:
    """A fedncm round: a random global version with a head, and `sites` valid statistics updates."""
    files = make_round(workdir, rng, layout=HEAD_LAYOUT, sites=0, round_number=round_number)
    base = read_float64(files.inputs.global_path)
    for i in range(sites):
        counts = rng.integers(1, 20, size=3).astype(np.float64)
        sums = counts[:, None] * rng.standard_normal((3, 4))
        path = workdir / f"stats-r{round_number}-s{i}.safetensors"
        write_statistics(path, base, sums, counts)
        files.updates.append(UpdateInfo(path, int(counts.sum()), {}, f"site-{i}"))
    return files
