"""Heterogeneous LoRA ranks: which aggregation to default to (docs/decisions.md 37).

    python bench/hetero_lora.py [--quick] [--out bench/results/hetero-lora]

Three measurements, all numpy (the coordinator's own code from coordinator/strategies):

1. *Reconstruction error* of the ideal weighted update sum_i w_i B_i A_i, per layer, for sites whose
   rank-r_i updates share the global's top components plus local changes (as after a round of training):
   naive FedAvg of the zero-padded factors (what `fedavg` would do), FlexLoRA's truncated SVD of the
   dense mean (`hetero_lora` method svd), FLoRA's stacking re-factorised to rank r (method stack), and
   FLoRA's stacking kept whole (exact, rank sum r_i, what merging into the base would distribute).
2. *Accuracy on a tiny synthetic task*: federated low-rank linear regression (8 non-IID sites of ranks
   2..8, global rank 8, a rank-16 target), local LoRA trained by gradient descent for some rounds;
   held-out MSE of naive padded FedAvg, FlexLoRA (= stack + re-factorise), FLoRA with the exact update
   merged into the base each round (adapters re-initialised), and every site at rank 8 (homogeneous).
3. *Coordinator cost* of the two routes of `hetero_lora` on safetensors files of LLM-like layers (d = k),
   8 sites: wall time of fold + finish, peak traced numpy memory, accumulator bytes on disk.

Writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from coordinator.strategies import RoundInputs, UpdateInfo, build_strategy  # noqa: E402
from coordinator.strategies.lora_math import (  # noqa: E402
    naive_product,
    refactor_product,
    refactor_stacked,
    stacked_factors,
)
from fedtune.lora_ranks import pad_to_shapes  # noqa: E402
from fedtune.tensorstream.safetensors_file import read_header, write_safetensors  # noqa: E402

SITE_RANKS = [2, 2, 4, 4, 8, 8, 8, 8]
GLOBAL_RANK = 8
LEARNING_RATES = (0.02, 0.05)  # plain gradient descent; 0.1 diverges on the stretched inputs


def relative(x: np.ndarray, ideal: np.ndarray) -> float:
    return float(np.linalg.norm(x - ideal) / np.linalg.norm(ideal))


# --- 1. reconstruction error ------------------------------------------------------------------------
def site_updates(
    rng: np.random.Generator, d: int, k: int, ranks: list[int], r: int, drift: float
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Padded (B_i, A_i): the global's top r_i components (decaying spectrum) moved by local training."""
    u, _ = np.linalg.qr(rng.standard_normal((d, r)))
    v, _ = np.linalg.qr(rng.standard_normal((k, r)))
    s = 1.0 / np.arange(1, r + 1)
    bs, as_ = [], []
    for rank in ranks:
        b = u[:, :rank] * s[:rank] + drift * rng.standard_normal((d, rank)) / np.sqrt(d)
        a = v[:, :rank].T + drift * rng.standard_normal((rank, k)) / np.sqrt(k)
        padded = pad_to_shapes(
            {"x.lora_A.w": a, "x.lora_B.w": b}, {"x.lora_A.w": (r, k), "x.lora_B.w": (d, r)}
        )
        bs.append(padded["x.lora_B.w"])
        as_.append(padded["x.lora_A.w"])
    return bs, as_


def reconstruction(seeds: int) -> list[dict[str, Any]]:
    rows = []
    for drift in (0.05, 0.2, 0.5):
        errors: dict[str, list[float]] = {"naive_fedavg": [], "flexlora_svd": [], "flora_stack_r": []}
        stacked_rank = 0
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            bs, as_ = site_updates(rng, 256, 256, SITE_RANKS, GLOBAL_RANK, drift)
            w = rng.integers(50, 500, size=len(bs)).astype(np.float64)
            p = w / w.sum()
            ideal = sum(pi * b @ a for pi, b, a in zip(p, bs, as_, strict=True))
            errors["naive_fedavg"].append(relative(naive_product(bs, as_, p), ideal))
            b, a, _ = refactor_product(ideal, GLOBAL_RANK)
            errors["flexlora_svd"].append(relative(b @ a, ideal))
            b_stack, a_stack = stacked_factors(bs, as_, p)
            stacked_rank = b_stack.shape[1]
            assert relative(b_stack @ a_stack, ideal) < 1e-12  # FLoRA's stack is exact
            b, a, _ = refactor_stacked(b_stack, a_stack, GLOBAL_RANK)
            errors["flora_stack_r"].append(relative(b @ a, ideal))
        rows.append(
            {
                "drift": drift,
                **{f"{m}_rel_error": float(np.mean(v)) for m, v in errors.items()},
                "flora_exact_rel_error": 0.0,
                "flora_exact_rank": stacked_rank,
            }
        )
    return rows


# --- 2. accuracy on a synthetic federated task ------------------------------------------------------
class Task:
    """y = W* x + noise; W* = W0 + a rank-16 change; site i sees x stretched along its own input dims."""

    def __init__(self, seed: int, d: int = 32, k: int = 64, sites: int = 8, n: int = 200) -> None:
        rng = np.random.default_rng(seed)
        self.w0 = rng.standard_normal((d, k)) / np.sqrt(k)
        change = (
            rng.standard_normal((d, GLOBAL_RANK))
            @ rng.standard_normal((GLOBAL_RANK, k))
            / np.sqrt(GLOBAL_RANK * k)
        )
        self.w_star = self.w0 + change
        self.sites = []
        for _ in range(sites):
            stretch = np.ones(k)
            stretch[rng.choice(k, size=k // 4, replace=False)] = 3.0
            x = rng.standard_normal((k, n)) * stretch[:, None]
            y = self.w_star @ x + 0.05 * rng.standard_normal((d, n))
            self.sites.append((x, y))
        self.x_test = rng.standard_normal((k, 2000))
        self.y_test = self.w_star @ self.x_test
        self.weights = np.full(sites, 1.0 / sites)

    def test_mse(self, w: np.ndarray) -> float:
        return float(np.mean(np.square(w @ self.x_test - self.y_test)))


def local_train(
    w_base: np.ndarray, b: np.ndarray, a: np.ndarray, x: np.ndarray, y: np.ndarray, steps: int, lr: float
) -> tuple[np.ndarray, np.ndarray]:
    b, a = b.copy(), a.copy()
    n = x.shape[1]
    for _ in range(steps):
        grad_w = ((w_base + b @ a) @ x - y) @ x.T / n
        b, a = b - lr * grad_w @ a.T, a - lr * b.T @ grad_w
    return b, a


def fresh_a(rng: np.random.Generator, rank: int, k: int) -> np.ndarray:
    return np.asarray(rng.uniform(-1, 1, size=(rank, k)) / np.sqrt(k))


def federate(
    task: Task, method: str, ranks: list[int], rounds: int, steps: int, lr: float, seed: int
) -> list[float]:
    rng = np.random.default_rng(seed)
    d, k = task.w0.shape
    r = GLOBAL_RANK
    w_base = task.w0.copy()
    b_glob, a_glob = np.zeros((d, r)), fresh_a(rng, r, k)
    curve = []
    for _ in range(rounds):
        bs, as_ = [], []
        for rank, (x, y) in zip(ranks, task.sites, strict=True):
            if method == "flora_merge":  # a fresh adapter on the merged base every round
                b0, a0 = np.zeros((d, rank)), fresh_a(rng, rank, k)
            else:  # the global's first r_i components
                b0, a0 = b_glob[:, :rank], a_glob[:rank]
            tail = b_glob[:, rank:] @ a_glob[rank:]
            site_base = w_base + tail if method == "flexlora_frozen_tail" else w_base  # the tail in the base
            b, a = local_train(site_base, b0, a0, x, y, steps, lr)
            padded = pad_to_shapes(
                {"l.lora_A.w": a, "l.lora_B.w": b}, {"l.lora_A.w": (r, k), "l.lora_B.w": (d, r)}
            )
            if method in ("flexlora_frozen_tail", "flexlora_kept_tail", "naive_kept_tail"):
                # the components the site did not train go back as they came
                padded["l.lora_A.w"][rank:] = a_glob[rank:]
                padded["l.lora_B.w"][:, rank:] = b_glob[:, rank:]
            bs.append(padded["l.lora_B.w"])
            as_.append(padded["l.lora_A.w"])
        p = [float(w) for w in task.weights]
        if method in ("naive_fedavg", "naive_kept_tail"):
            b_glob = np.sum([pi * b for pi, b in zip(p, bs, strict=True)], axis=0)
            a_glob = np.sum([pi * a for pi, a in zip(p, as_, strict=True)], axis=0)
        elif method in ("flexlora", "flexlora_frozen_tail", "flexlora_kept_tail"):
            b_glob, a_glob, _ = refactor_stacked(*stacked_factors(bs, as_, p), r)
        elif method == "flora_merge":
            b_stack, a_stack = stacked_factors(bs, as_, p)
            w_base = w_base + b_stack @ a_stack
        curve.append(
            task.test_mse(w_base + b_glob @ a_glob) if method != "flora_merge" else task.test_mse(w_base)
        )
    return curve


def accuracy(seeds: int, rounds: int, lr: float) -> dict[str, Any]:
    settings = {
        "rounds": rounds,
        "local_steps": 10,
        "lr": lr,
        "site_ranks": SITE_RANKS,
        "global_rank": GLOBAL_RANK,
        "target_rank": GLOBAL_RANK,
    }
    runs = {
        "naive FedAvg of zero-padded factors (plain fedavg)": ("naive_fedavg", SITE_RANKS),
        "hetero_lora, sites zero-pad (FlexLoRA as published)": ("flexlora", SITE_RANKS),
        "FLoRA: exact stacked update merged into the base (not wired)": ("flora_merge", SITE_RANKS),
        "hetero_lora, sites send untrained components back (wired)": ("flexlora_kept_tail", SITE_RANKS),
        "hetero_lora, sites also train with that tail in their base (not wired)": (
            "flexlora_frozen_tail",
            SITE_RANKS,
        ),
        "naive FedAvg of factors, sites send untrained components back": ("naive_kept_tail", SITE_RANKS),
        "every site rank 8, hetero_lora": ("flexlora", [GLOBAL_RANK] * len(SITE_RANKS)),
        "every site rank 8, naive fedavg (the homogeneous default)": (
            "naive_fedavg",
            [GLOBAL_RANK] * len(SITE_RANKS),
        ),
    }
    out: dict[str, Any] = {"settings": settings, "methods": {}}
    for label, (method, ranks) in runs.items():
        curves = []
        for seed in range(seeds):
            task = Task(seed)
            curves.append(federate(task, method, ranks, rounds, 10, lr, seed))
        mean = np.mean(curves, axis=0)
        out["methods"][label] = {
            "test_mse_by_round": [round(float(v), 5) for v in mean],
            "final_test_mse": float(mean[-1]),
        }
    task = Task(0)
    out["reference"] = {"start_mse": task.test_mse(task.w0), "best_mse": 0.0}
    return out


# --- 3. coordinator cost ----------------------------------------------------------------------------
def coordinator_cost(
    dims: list[int], layers: int, ranks: list[int], r: int, methods: tuple[str, ...] = ("stack", "svd")
) -> list[dict[str, Any]]:
    rows = []
    for dim in dims:
        with tempfile.TemporaryDirectory(prefix="fedtune-hetero-bench-") as tmp:
            work = Path(tmp)
            rng = np.random.default_rng(dim)
            shapes = {}
            for layer in range(layers):
                shapes[f"l{layer}.lora_A.weight"] = (r, dim)
                shapes[f"l{layer}.lora_B.weight"] = (dim, r)
            global_arrays = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
            write_safetensors(work / "global.safetensors", global_arrays)
            manifest, _ = read_header(work / "global.safetensors")
            updates = []
            for i, rank in enumerate(ranks):
                small = {
                    n: (
                        rng.standard_normal((rank, dim))
                        if ".lora_A." in n
                        else rng.standard_normal((dim, rank))
                    )
                    for n in shapes
                }
                arrays = {n: a.astype(np.float32) for n, a in pad_to_shapes(small, shapes).items()}
                path = work / f"update-{i}.safetensors"
                write_safetensors(path, arrays)
                updates.append(UpdateInfo(path, 100 + i, {}, f"site-{i}"))
            for method in methods:
                round_dir = work / method
                round_dir.mkdir()
                strategy = build_strategy("hetero_lora", {"method": method})
                inputs = RoundInputs(round_dir, manifest, work / "global.safetensors", None, {}, 1)
                tracemalloc.start()
                started = time.perf_counter()
                strategy.begin_round(inputs)
                for update in updates:
                    strategy.fold(update, strategy.weight(update, inputs))
                folded = time.perf_counter()
                _, fold_peak = tracemalloc.get_traced_memory()
                tracemalloc.reset_peak()
                result = strategy.finish_round()
                finished = time.perf_counter()
                _, finish_peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                disk = sum(f.stat().st_blocks * 512 for f in round_dir.iterdir() if f.suffix == ".f64")
                rows.append(
                    {
                        "d_equals_k": dim,
                        "layers": layers,
                        "method": method,
                        "fold_seconds": round(folded - started, 3),
                        "finish_seconds": round(finished - folded, 3),
                        "fold_peak_mib": round(fold_peak / 2**20, 1),
                        "finish_peak_mib": round(finish_peak / 2**20, 1),
                        "accumulator_disk_mib": round(disk / 2**20, 1),
                        "truncation_error_max": round(result.metrics["truncation_error_max"], 6),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Heterogeneous LoRA ranks: stack vs svd vs naive (decision 37)",
        "",
        f"`{report['command']}` ({report['date']}, {report['machine']}; load average before "
        f"{report['load_before']}, after {report['load_after']}: a shared machine, times are noisy).",
        "",
        f"## 1. Reconstruction error of the ideal weighted update (256 x 256, site ranks {SITE_RANKS}, r = "
        f"{GLOBAL_RANK})",
        "",
        "| local drift | naive FedAvg of padded factors | FlexLoRA svd | FLoRA stack -> rank r | FLoRA exact "
        "(rank) |",
        "|---|---|---|---|---|",
    ]
    for row in report["reconstruction"]:
        lines.append(
            f"| {row['drift']} | {row['naive_fedavg_rel_error']:.4f} | {row['flexlora_svd_rel_error']:.4f} | "
            f"{row['flora_stack_r_rel_error']:.4f} | 0 ({row['flora_exact_rank']}) |"
        )
    for acc in report["accuracy"]:
        lines += [
            "",
            f"## 2. Synthetic federated regression: held-out MSE ({acc['settings']})",
            "",
            f"Start (base only): {acc['reference']['start_mse']:.4f}; the target change has rank "
            f"{GLOBAL_RANK}, so a rank-8 adapter can reach 0 (noise-free test labels). Mean of the seeds.",
            "",
            "| method | round 1 | round 5 | round 10 | round 20 | final |",
            "|---|---|---|---|---|---|",
        ]
        for label, row in acc["methods"].items():
            curve = row["test_mse_by_round"]
            pick = [curve[i] if i < len(curve) else float("nan") for i in (0, 4, 9, 19)]
            lines.append(
                f"| {label} | " + " | ".join(f"{v:.4f}" for v in pick) + f" | {row['final_test_mse']:.4f} |"
            )
    lines += [
        "",
        "## 3. Coordinator cost of `hetero_lora` (8 sites, ranks 4,4,8,8,16,16,16,16, r = 16)",
        "",
        "| d = k | layers | method | fold s | finish s | fold peak MiB | finish peak MiB | "
        "accumulator on disk MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["cost"]:
        lines.append(
            f"| {row['d_equals_k']} | {row['layers']} | {row['method']} | {row['fold_seconds']} | "
            f"{row['finish_seconds']} | {row['fold_peak_mib']} | {row['finish_peak_mib']} | "
            f"{row['accumulator_disk_mib']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "hetero-lora"))
    parser.add_argument("--dims", default="1024,2048,4096", help="layer sizes d = k of the cost part")
    parser.add_argument(
        "--cost-only", action="store_true", help="only part 3 (e.g. one big size under a lock)"
    )
    parser.add_argument("--methods", default="stack,svd", help="hetero_lora methods of the cost part")
    args = parser.parse_args()
    load_before = os.getloadavg()
    seeds, rounds = (2, 5) if args.quick else (5, 30)
    dims, layers = ([256], 2) if args.quick else ([int(d) for d in args.dims.split(",")], 2)
    report: dict[str, Any] = {
        "command": "python bench/hetero_lora.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} CPUs",
        "cost": coordinator_cost(
            dims, layers, [4, 4, 8, 8, 16, 16, 16, 16], 16, tuple(args.methods.split(","))
        ),
    }
    if args.cost_only:
        report["load_before"] = [round(v, 2) for v in load_before]
        report["load_after"] = [round(v, 2) for v in os.getloadavg()]
        Path(args.out).with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        return
    report["reconstruction"] = reconstruction(seeds)
    report["accuracy"] = [accuracy(seeds, rounds, lr) for lr in LEARNING_RATES]
    report["load_before"] = [round(v, 2) for v in load_before]
    report["load_after"] = [round(v, 2) for v in os.getloadavg()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
