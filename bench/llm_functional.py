"""Functional LLM benchmark: does federated instruction tuning teach a small Llama something it could not do?

    flock /tmp/fedtune-heavy.lock python bench/llm_functional.py [--rounds 5 --local-steps 12 ...]

1. A Llama-architecture model (LlamaConfig, about 0.7 M parameters) with a word-level tokenizer made here
   is trained from scratch, centralized, on synthetic prose stating 320 facts (40 nouns x 8 attributes:
   "cat color is red"; bench/functional_task.py, bench/functional_pretrain.py).
2. Federated instruction tuning (task: instruction, LoRA, fedavg) over 8 sites through a real coordinator
   and one worker daemon per site; site i asks about attribute i only (non-IID by task type), on nouns
   the test set never asks about.
3. Variants, each scored on the global held-out test set (every attribute of held-out nouns): federated
   LoRA per round, heterogeneous ranks (peft.site_ranks + hetero_lora; skipped with the reason where the
   branch lacks them), local-only (each site alone) and centralized (pooled data), both with the
   federated run's examples seen.

Writes bench/results/llm-functional.json, .md and .png; records the load average before and after
(the machine is shared).
"""

from __future__ import annotations

import datetime
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import click  # noqa: E402

from bench import functional_runs as runs  # noqa: E402
from bench.functional_pretrain import BaseModelConfig, pretrain  # noqa: E402
from bench.functional_report import write_outputs  # noqa: E402
from bench.functional_task import SKILLS, make_words, pretraining_texts, write_instruction_data  # noqa: E402
from fedtune.spec import parse_spec  # noqa: E402

HETERO_RANKS = [2, 2, 4, 4, 8, 8, 8, 8]  # site i's LoRA rank in the heterogeneous variant (global r = 8)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@click.command()
@click.option("--rounds", type=click.IntRange(1), default=8, show_default=True)
@click.option("--local-steps", type=click.IntRange(1), default=12, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True)
@click.option("--learning-rate", type=float, default=5e-3, show_default=True)
@click.option("--rank", type=click.IntRange(1), default=8, show_default=True)
@click.option("--pretrain-steps", type=click.IntRange(1), default=1500, show_default=True)
@click.option(
    "--per-site", type=click.IntRange(1), default=240, show_default=True, help="train examples per site"
)
@click.option(
    "--test-words",
    type=click.IntRange(1, 30),
    default=10,
    show_default=True,
    help="held-out nouns (x 8 attributes)",
)
@click.option(
    "--variants",
    default="federated,hetero,local-only,centralized",
    show_default=True,
    help="comma-separated subset of federated, hetero, local-only, centralized",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=ROOT / "bench" / "results")
@click.option("--work-dir", type=click.Path(path_type=Path), default=None, help="[OUT/llm-functional-work]")
@click.option("--keep-work", is_flag=True)
def main(
    rounds: int,
    local_steps: int,
    batch_size: int,
    learning_rate: float,
    rank: int,
    pretrain_steps: int,
    per_site: int,
    test_words: int,
    variants: str,
    seed: int,
    out_dir: Path,
    work_dir: Path | None,
    keep_work: bool,
) -> None:
    """Pretrain a small Llama, then compare federated, heterogeneous-rank, local-only and centralized LoRA."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    chosen = [v.strip() for v in variants.split(",") if v.strip()]
    load_before, started, cpu_started = _load(), time.monotonic(), time.process_time()
    children_started = _children_cpu()
    work = (work_dir or out_dir / "llm-functional-work").resolve()
    shutil.rmtree(work, ignore_errors=True)
    model_root = work / "models"
    torch.set_num_threads(1)  # the cores are shared: more threads only spin (and workers get 1 each)
    words = make_words(seed, n_held_out=test_words + 4)
    base_config = BaseModelConfig(steps=pretrain_steps, seed=seed)
    runs._log(f"pretraining {base_config}")
    base_info = pretrain(
        base_config, pretraining_texts(words.all, 20000, seed + 1), model_root / runs.MODEL_NAME
    )
    data = write_instruction_data(
        work / "data", words, per_site=per_site, eval_per_site=4, test_per_skill=test_words, seed=seed + 2
    )
    conversations = runs.test_conversations(data.test_file)
    settings: dict[str, Any] = dict(
        rounds=rounds, local_steps=local_steps, batch_size=batch_size, learning_rate=learning_rate, rank=rank,
        sites=len(data.sites), seed=seed,
    )  # fmt: skip
    spec_dict = runs.spec_data(**settings)
    spec = parse_spec(spec_dict)
    runs._log("scoring the base")
    results: dict[str, Any] = {"base": runs.base_scores(spec, model_root, conversations)}
    federated: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    specs = []
    if "federated" in chosen:
        specs.append(spec)
    if "hetero" in chosen:
        hetero = runs.hetero_spec(spec_dict, dict(zip(data.sites, HETERO_RANKS, strict=True)))
        if isinstance(hetero, str):
            skipped["hetero"] = hetero
            runs._log(f"skipping hetero: {hetero}")
        else:
            specs.append(hetero)
    if specs:
        from bench.federated import site_cluster

        with site_cluster(work, data.sites, data.sites_root, model_root) as cluster:
            for run_spec in specs:
                label = "hetero" if run_spec.name.endswith("hetero") else "federated"
                runs._log(f"federated run {label}")
                federated[label] = runs.run_federated(
                    cluster, run_spec, data, conversations, work / "exports", timeout=3600
                )
    if "local-only" in chosen:
        per_site_scores = {}
        for site in data.sites:
            runs._log(f"local-only {site}")
            per_site_scores[site] = runs.train_alone(
                spec,
                model_root,
                data.sites_root / site / "train.jsonl",
                rounds * local_steps,
                conversations,
                site,
            )
        results["local-only"] = {
            "exact_match_mean": statistics.fmean(s["exact_match"] for s in per_site_scores.values()),
            "exact_match_max": max(s["exact_match"] for s in per_site_scores.values()),
            "rouge_l_mean": statistics.fmean(s["rouge_l"] for s in per_site_scores.values()),
            "loss_mean": statistics.fmean(s["loss"] for s in per_site_scores.values()),
            "sites": per_site_scores,
        }
    if "centralized" in chosen:
        runs._log("centralized")
        steps = len(data.sites) * rounds * local_steps
        results["centralized"] = runs.train_alone(
            spec, model_root, data.pooled_train, steps, conversations, "pooled"
        )
    document = {
        "benchmark": "llm-functional",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": {
            **settings,
            "pretrain_steps": pretrain_steps,
            "per_site": per_site,
            "test_words": test_words,
        },
        "skills": [s.name for s in SKILLS],
        "sites": data.sites,
        "hetero_ranks": dict(zip(data.sites, HETERO_RANKS, strict=True)),
        "base_model": base_info,
        "test_examples": len(conversations),
        "results": results,
        "federated": federated,
        "skipped": skipped,
        "load_average_before": load_before,
        "load_average_after": _load(),
        "wall_seconds": time.monotonic() - started,
        "bench_process_cpu_seconds": time.process_time() - cpu_started,
        # coordinator and workers, once they have exited (the cluster is stopped by now)
        "child_process_cpu_seconds": _children_cpu() - children_started,
        "cpu_count": os.cpu_count(),
        "command": " ".join(["python bench/llm_functional.py", *sys.argv[1:]]),
    }
    paths = write_outputs(document, out_dir)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    click.echo(paths["markdown"].read_text())
    for kind, path in paths.items():
        click.echo(f"{kind}: {path}")


if __name__ == "__main__":
    main()
