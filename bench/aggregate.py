"""Aggregation throughput: how fast strategies fold spooled updates, next to a plain memcpy.

    python bench/aggregate.py [--sites 8] [--mib 64] [--strategies fedavg,fedadam] [--workdir DIR]

Creates a global version and N float32 updates of S MiB on disk, then times for each strategy
begin_round + fold x N (MB/s of update bytes folded) and finish_round separately; also times
reading the updates alone (iter_float32, no arithmetic) and a numpy memcpy of the same number of
bytes. Files are freshly written, so reads come from the page cache: this measures the
coordinator's CPU cost, not the disk. Writes bench/results/aggregate.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# `python bench/aggregate.py` puts bench/ first on the path, where the modules of the bench package
# (cli, config, report ...) would shadow top-level ones: import them as `bench.*` from the root.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from coordinator.strategies import RoundInputs, UpdateInfo, build_strategy  # noqa: E402
from fedtune.tensorstream.manifest import Manifest, TensorSpec  # noqa: E402
from fedtune.tensorstream.safetensors_file import SafetensorsFileWriter, iter_float32  # noqa: E402

MB = 1e6
WRITE_ELEMENTS = 1 << 20


def write_random(path: Path, manifest: Manifest, seed: int) -> None:
    rng = np.random.default_rng(seed)
    numel = sum(t.numel for t in manifest.tensors)
    with SafetensorsFileWriter(path, manifest) as writer:
        for start in range(0, numel, WRITE_ELEMENTS):
            writer.write_flat_float32(
                start, rng.standard_normal(min(WRITE_ELEMENTS, numel - start), dtype=np.float32)
            )


def time_strategy(
    name: str, workdir: Path, manifest: Manifest, updates: list[UpdateInfo]
) -> dict[str, float]:
    strategy = build_strategy(name, {})
    inputs = RoundInputs(workdir, manifest, workdir / "global.safetensors", None, {}, 1)
    started = time.perf_counter()
    strategy.begin_round(inputs)
    for update in updates:
        strategy.fold(update, strategy.weight(update, inputs))
    folded = time.perf_counter()
    strategy.finish_round()
    finished = time.perf_counter()
    return {"fold_seconds": folded - started, "finish_seconds": finished - folded}


def time_read(updates: list[UpdateInfo]) -> float:
    started = time.perf_counter()
    for update in updates:
        for _ in iter_float32(update.path):
            pass
    return time.perf_counter() - started


def time_memcpy(nbytes: int, sites: int, repeats: int = 3) -> float:
    source = np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8)
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(sites):
            np.copyto(target, source)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sites", type=int, default=8)
    parser.add_argument("--mib", type=int, default=64, help="size of one update in MiB")
    parser.add_argument("--strategies", default="fedavg,fedadam")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch dir (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "aggregate.json")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="fedtune-bench-", dir=args.workdir))
    try:
        numel = args.mib * (1 << 20) // 4
        manifest = Manifest.of(
            [TensorSpec(f"layer{i}.weight", "float32", (numel // 4,), numel) for i in range(4)]
        )
        write_random(workdir / "global.safetensors", manifest, 0)
        updates = []
        for i in range(args.sites):
            write_random(workdir / f"update-{i}.safetensors", manifest, i + 1)
            updates.append(UpdateInfo(workdir / f"update-{i}.safetensors", 100 + i, {}, f"site-{i}"))
        update_bytes = args.sites * manifest.total_bytes

        rows: list[dict[str, object]] = []
        memcpy_s = time_memcpy(manifest.total_bytes, args.sites)
        rows.append(
            {
                "what": "numpy memcpy (same bytes)",
                "seconds": memcpy_s,
                "mb_per_s": update_bytes / MB / memcpy_s,
            }
        )
        read_s = time_read(updates)
        rows.append(
            {
                "what": "read updates only (iter_float32)",
                "seconds": read_s,
                "mb_per_s": update_bytes / MB / read_s,
            }
        )
        for name in args.strategies.split(","):
            timing = time_strategy(name, workdir, manifest, updates)
            rows.append(
                {
                    "what": f"{name}: begin + fold x {args.sites}",
                    "seconds": timing["fold_seconds"],
                    "mb_per_s": update_bytes / MB / timing["fold_seconds"],
                }
            )
            rows.append(
                {"what": f"{name}: finish_round", "seconds": timing["finish_seconds"], "mb_per_s": None}
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"{args.sites} updates x {args.mib} MiB float32 = {update_bytes / MB:.0f} MB folded per strategy")
    print(f"{'what':<40} {'seconds':>9} {'MB/s':>9}")
    for row in rows:
        rate = f"{row['mb_per_s']:9.0f}" if row["mb_per_s"] is not None else f"{'-':>9}"
        print(f"{row['what']:<40} {row['seconds']:9.3f} {rate}")

    result = {
        "benchmark": "aggregate",
        "sites": args.sites,
        "update_mib": args.mib,
        "update_bytes_total": update_bytes,
        "rows": rows,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "notes": "update files freshly written (page cache hot); fold = judge each update (finite check "
        "through a memory map) + weighted adds into a float64 accumulator file, 4 updates per pass "
        "through mapped windows (decision 41)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
