"""Secure-aggregation kernel throughput (issue 10): masking at a site, folding and unmasking at the
coordinator, in one process, no network, no disk.

    python bench/secagg_kernel.py [--sites 8,32] [--mib 1.3,64] [--out bench/results/secagg-kernel.json]

For each update size S and site count n (k and t by the automatic rule):
- setup: every site's keys, dealing (Shamir + sealing) and opening of shares, seconds per site;
- mask: one site quantizes and masks its float32 update chunk by chunk (k + 1 ChaCha20 streams),
  MB/s of float32 update bytes;
- fold: the coordinator's modular fold of n masked updates, MB/s of masked bytes folded;
- unmask with floor(n/4) sites dropped before uploading: rebuilding secrets from shares (plan) and
  removing the masks from the sum (pass), seconds and MB/s of the summed vector.
For the smallest size the whole round also runs through ``run_local_round`` and the max abs
difference between the unmasked mean and the plain weighted mean is recorded. The machine is shared:
timings are indicative. Writes JSON and prints it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedtune.secagg.dealing import deal_shares, open_received_shares  # noqa: E402
from fedtune.secagg.graph import choose_graph_params, neighbour_graph  # noqa: E402
from fedtune.secagg.keys import SitePublic, SiteSecrets, round_context  # noqa: E402
from fedtune.secagg.local_round import DEFAULT_CHUNK_ELEMENTS, run_local_round  # noqa: E402
from fedtune.secagg.masking import mask_chunk, modular_fold, site_mask_keys  # noqa: E402
from fedtune.secagg.quantize import QuantizationParams, mean_error_bound, quantize_chunk  # noqa: E402
from fedtune.secagg.recovery import ShareKeeper, build_unmask_plan  # noqa: E402

MB = 1e6
MIB = 1 << 20
CONTEXT = round_context("bench", "1")
CHUNK = DEFAULT_CHUNK_ELEMENTS


def bench_one(sites: int, mib: float, rng: np.random.Generator) -> dict[str, object]:
    elements = int(mib * MIB) // 4
    update = rng.normal(scale=0.05, size=elements).astype(np.float32)
    nbytes = update.nbytes
    params = choose_graph_params(sites)
    graph = neighbour_graph(params, b"bench-seed")
    quantization = QuantizationParams(clip_range=8.0, max_weight=1000.0, max_sites=sites)

    start = time.perf_counter()
    secrets = [SiteSecrets.generate() for _ in range(sites)]
    publics: dict[int, SitePublic] = {i: s.public() for i, s in enumerate(secrets)}
    boxes: dict[int, dict[int, bytes]] = {i: {} for i in range(sites)}
    for owner in range(sites):
        neighbours = {j: publics[j] for j in graph[owner]}
        for holder, box in deal_shares(owner, secrets[owner], neighbours, params.threshold, CONTEXT).items():
            boxes[holder][owner] = box
    keepers = [
        ShareKeeper(i, open_received_shares(i, secrets[i], boxes[i], publics, CONTEXT), params.threshold)
        for i in range(sites)
    ]
    setup_per_site = (time.perf_counter() - start) / sites

    keys = site_mask_keys(0, secrets[0], {j: publics[j].mask_key for j in graph[0]}, CONTEXT)
    repeats = max(1, int(64 / mib)) if mib < 8 else 1
    masked = np.empty(elements, dtype=np.uint32)
    start = time.perf_counter()
    for _ in range(repeats):
        for begin in range(0, elements, CHUNK):
            values = update[begin : begin + CHUNK]
            quantized = quantize_chunk(values, 100.0, quantization, rng)
            masked[begin : begin + CHUNK] = mask_chunk(quantized, 1 + begin, keys)
    mask_seconds = (time.perf_counter() - start) / repeats

    accumulator = np.zeros(elements, dtype=np.uint32)
    start = time.perf_counter()
    for _ in range(sites):  # the same masked update n times: the fold's cost does not depend on content
        for begin in range(0, elements, CHUNK):
            modular_fold(accumulator[begin : begin + CHUNK], masked[begin : begin + CHUNK])
    fold_seconds = time.perf_counter() - start

    dropped = frozenset(range(sites // 4))
    survivors = frozenset(range(sites)) - dropped
    start = time.perf_counter()
    revealed = [share for i in sorted(survivors) for share in keepers[i].reveal(survivors, dropped)]
    plan = build_unmask_plan(graph, params.threshold, publics, survivors, dropped, revealed, CONTEXT)
    plan_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for begin in range(0, elements, CHUNK):
        plan.unmask_chunk(accumulator[begin : begin + CHUNK], 1 + begin)
    pass_seconds = time.perf_counter() - start

    result: dict[str, object] = {
        "sites": sites,
        "update_mib": mib,
        "update_bytes": nbytes,
        "neighbours_k": params.neighbours,
        "threshold_t": params.threshold,
        "setup_seconds_per_site": round(setup_per_site, 4),
        "mask_mb_per_s": round(nbytes / MB / mask_seconds, 1),
        "mask_seconds_per_site": round(mask_seconds, 4),
        "fold_mb_per_s": round(sites * nbytes / MB / fold_seconds, 1),
        "dropped": len(dropped),
        "unmask_streams": len(plan.removal.terms),
        "unmask_plan_seconds": round(plan_seconds, 4),
        "unmask_pass_seconds": round(pass_seconds, 4),
        "unmask_mb_per_s": round(nbytes / MB / pass_seconds, 1),
    }
    if mib <= 2:
        weights = [float(w) for w in rng.integers(100, 1000, size=sites)]
        updates = [{"x": rng.normal(scale=0.05, size=elements).astype(np.float32)} for _ in range(sites)]
        round_result = run_local_round(updates, weights, quantization, drop_before_upload=dropped, rng=rng)
        alive = sorted(round_result.survivors)
        plain = sum(weights[i] * updates[i]["x"].astype(np.float64) for i in alive) / sum(
            weights[i] for i in alive
        )
        result["round_max_abs_error_vs_plain_mean"] = float(np.max(np.abs(round_result.mean["x"] - plain)))
        result["round_proven_error_bound"] = mean_error_bound(
            quantization, round_result.weight_sum, len(alive)
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", default="8,32")
    parser.add_argument("--mib", default="1.3,64")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "secagg-kernel.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    runs = [bench_one(int(n), float(mib), rng) for mib in args.mib.split(",") for n in args.sites.split(",")]
    report = {
        "benchmark": "secagg_kernel",
        "date": datetime.date.today().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "note": "one process, shared machine (2 cores, other jobs running): indicative timings; "
        "mask_mb_per_s is one site's cost, sites mask in parallel in a real round; clip_range 8, "
        "max_weight 1000, weights 100..1000",
        "chunk_elements": CHUNK,
        "runs": runs,
    }
    text = json.dumps(report, indent=2)
    Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
