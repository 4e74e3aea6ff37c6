"""Run as a subprocess by test_memory.py: fold N on-disk updates of S MiB with fedavg and print the
peak RSS growth (the process's own high-water mark during the round minus its RSS once the files
exist) as JSON.

The peak is VmHWM, reset to the current RSS through /proc/self/clear_refs just before the round. Not
ru_maxrss: Linux carries the parent's peak across fork+exec, so a child of a pytest process that has
imported torch would "start" at several hundred MiB.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from coordinator.strategies import RoundInputs, UpdateInfo, build_strategy
from fedtune.tensorstream.manifest import Manifest, TensorSpec
from fedtune.tensorstream.safetensors_file import SafetensorsFileWriter

WRITE_ELEMENTS = 1 << 20


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def current_rss_bytes() -> int:
    return _status_bytes("VmRSS")


def reset_peak_rss() -> None:
    """Reset this process's RSS high-water mark (VmHWM) to its current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_bytes() -> int:
    return _status_bytes("VmHWM")


def write_random(path: Path, manifest: Manifest, seed: int) -> None:
    """A float32 file written in 4 MiB pieces, so creating it never holds the whole tensor."""
    rng = np.random.default_rng(seed)
    numel = sum(t.numel for t in manifest.tensors)
    with SafetensorsFileWriter(path, manifest) as writer:
        for start in range(0, numel, WRITE_ELEMENTS):
            writer.write_flat_float32(
                start, rng.standard_normal(min(WRITE_ELEMENTS, numel - start), dtype=np.float32)
            )


def main(workdir: Path, sites: int, mib: int, strategy_name: str) -> None:
    numel = mib * (1 << 20) // 4
    manifest = Manifest.of(
        [TensorSpec(f"layer{i}.weight", "float32", (numel // 4,), numel) for i in range(4)]
    )
    write_random(workdir / "global.safetensors", manifest, 0)
    updates = []
    for i in range(sites):
        write_random(workdir / f"update-{i}.safetensors", manifest, i + 1)
        updates.append(UpdateInfo(workdir / f"update-{i}.safetensors", 100 + i, {}, f"site-{i}"))
    reset_peak_rss()
    baseline = current_rss_bytes()

    started = time.perf_counter()
    strategy = build_strategy(strategy_name, {})
    inputs = RoundInputs(workdir, manifest, workdir / "global.safetensors", None, {}, 1)
    strategy.begin_round(inputs)
    for update in updates:
        strategy.fold(update, strategy.weight(update, inputs))
    strategy.finish_round()
    seconds = time.perf_counter() - started

    peak = peak_rss_bytes()
    print(
        json.dumps(
            {"baseline_rss": baseline, "peak_rss": peak, "growth": peak - baseline, "seconds": seconds}
        )
    )


if __name__ == "__main__":
    main(
        Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "fedavg"
    )
