"""Run as a subprocess by test_memory.py: fold N on-disk updates of S MiB with fedavg and print the
peak RSS growth (ru_maxrss after the round minus the RSS once the files exist) as JSON."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

from coordinator.strategies import RoundInputs, UpdateInfo, build_strategy
from fedtune.tensorstream.manifest import Manifest, TensorSpec
from fedtune.tensorstream.safetensors_file import SafetensorsFileWriter

WRITE_ELEMENTS = 1 << 20


def current_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


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
    baseline = current_rss_bytes()

    started = time.perf_counter()
    strategy = build_strategy(strategy_name, {})
    inputs = RoundInputs(workdir, manifest, workdir / "global.safetensors", None, {}, 1)
    strategy.begin_round(inputs)
    for update in updates:
        strategy.fold(update, strategy.weight(update, inputs))
    strategy.finish_round()
    seconds = time.perf_counter() - started

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {"baseline_rss": baseline, "peak_rss": peak, "growth": peak - baseline, "seconds": seconds}
        )
    )


if __name__ == "__main__":
    main(
        Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "fedavg"
    )
