"""Per-byte CPU cost of each phase of a big round, in one process (no gRPC): CPU seconds, not wall time.

    python bench/byte_costs.py [--mib 128] [--sites 4] [--out bench/results/byte-costs.json] [--label after]

Phases, on float32 updates of `--mib` MiB (8 tensors): upload (the site's encoder and protobuf
message, then the coordinator's protobuf parse and StreamDecoder: crc32, finite and max checks,
sha256, spool file with checkpoints) x sites; download serve side (chunks read from the file, crc32,
protobuf) once; fold of every update into fedavg (with begin_round); a numpy memcpy of the same bytes;
commit (finish_round, the manifest digest and the blob store put, as RoundAggregator does it). CPU
seconds (`time.process_time`, user + system of this process, so page-cache work counts) are steadier
than wall time on a shared machine; both are recorded. Chunk size and checkpoint interval are the
code's defaults. Writes `--out` (JSON, runs keyed by `--label`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from coordinator.strategies import RoundInputs, UpdateInfo, build_strategy  # noqa: E402
from fedtune.tensorstream.decoder import StreamDecoder  # noqa: E402
from fedtune.tensorstream.encoder import (  # noqa: E402
    iter_chunks_from_arrays,
    iter_chunks_from_file,
    manifest_for_arrays,
    manifest_for_file,
)
from fedtune.tensorstream.manifest import DEFAULT_CHUNK_BYTES  # noqa: E402
from fedtune.tensorstream.safetensors_file import write_safetensors  # noqa: E402
from fedtune.tensorstream.serde import chunk_from_proto, chunk_to_proto  # noqa: E402
from fedtune.v1 import worker_pb2  # noqa: E402
from storage.blobs import LocalBlobStore  # noqa: E402


def measure(rows: dict[str, dict[str, float]], name: str, nbytes: int, fn: Callable[[], Any]) -> Any:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rows[name] = {
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "mb_per_cpu_s": round(nbytes / 1e6 / cpu, 1),
    }
    print(f"{name:38s} cpu {cpu:7.3f} s  wall {wall:7.3f} s  {nbytes / 1e6 / cpu:8.0f} MB per CPU-second")
    return result


def run(work: Path, mib: int, sites: int) -> dict[str, dict[str, float]]:
    numel = mib * (1 << 20) // 4 // 8
    rng = np.random.default_rng(0)
    arrays = {f"t{i}": rng.standard_normal(numel, dtype=np.float32) for i in range(8)}
    manifest = manifest_for_arrays(arrays)
    size = manifest.total_bytes
    rows: dict[str, dict[str, float]] = {}

    def uploads() -> None:
        for i in range(sites):
            upload(i)

    def upload(i: int) -> None:
        decoder = StreamDecoder(manifest, work / f"update-{i}.safetensors", max_abs_value=1e9)
        for chunk in iter_chunks_from_arrays(arrays, manifest, DEFAULT_CHUNK_BYTES):
            wire = worker_pb2.PushUpdateRequest(chunk=chunk_to_proto(chunk)).SerializeToString()
            decoder.add(chunk_from_proto(worker_pb2.PushUpdateRequest.FromString(wire).chunk))
        decoder.finish()

    measure(rows, f"upload + verify x {sites}", sites * size, uploads)

    def serve() -> None:
        for chunk in iter_chunks_from_file(work / "update-0.safetensors", DEFAULT_CHUNK_BYTES):
            worker_pb2.FetchTensorsResponse(chunk=chunk_to_proto(chunk)).SerializeToString()

    measure(rows, "download, serve side", size, serve)
    write_safetensors(work / "global.safetensors", arrays)
    strategy = build_strategy("fedavg", {})
    inputs = RoundInputs(work, manifest, work / "global.safetensors", None, {}, 1)
    updates = [UpdateInfo(work / f"update-{i}.safetensors", 100 + i, {}, f"s{i}") for i in range(sites)]

    def fold() -> None:
        strategy.begin_round(inputs)
        for update in updates:
            strategy.fold(update, strategy.weight(update, inputs))

    measure(rows, f"fold x {sites}", sites * size, fold)
    source = np.frombuffer(os.urandom(size), np.uint8)
    target = np.empty_like(source)
    np.copyto(target, source)

    def copies() -> None:
        for _ in range(sites):
            np.copyto(target, source)

    measure(rows, f"memcpy x {sites}", sites * size, copies)
    rows["fold / memcpy (CPU)"] = {
        "ratio": round(rows[f"memcpy x {sites}"]["cpu_s"] / rows[f"fold x {sites}"]["cpu_s"], 3)
    }
    blobs = LocalBlobStore(work / "blobs")

    def commit() -> str:
        result = strategy.finish_round()
        digests = getattr(result, "new_tensors_digests", None)
        if digests is None:  # main: hash for the manifest, then copy into the store
            manifest_for_file(result.new_tensors_path)
            return blobs.put_file(result.new_tensors_path)
        return blobs.put_file(result.new_tensors_path, move=True, digest=digests.file)

    measure(rows, "commit (finish + digests + blob put)", size, commit)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=128)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--label", default="after")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "byte-costs.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="fedtune-bytes-"))
    try:
        rows = run(work, args.mib, args.sites)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    runs: dict[str, Any] = {}
    if args.out.exists():
        runs = json.loads(args.out.read_text()).get("runs", {})
    runs[args.label] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mib": args.mib,
        "sites": args.sites,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "byte-costs", "runs": runs}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
