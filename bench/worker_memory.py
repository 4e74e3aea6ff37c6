"""Where a worker's memory goes: resident set after each phase of a MiniLM train task.

    python bench/worker_memory.py [--examples 2000] [--threads 1] [--rounds 2] [--json out.json]

Runs in one process what a worker daemon does for a `fedtune bench quality` site (worker/tasks.py
`run_train` on all-MiniLM-L6-v2 and BBC News, LoRA r=8 on query/key/value/dense, 20 steps of 16 x 128
tokens, evaluation on the site's eval split) and prints the resident set (RSS) and the process's peak
after each phase: interpreter, torch import, transformers + peft import, model build, data load,
training, evaluation, a second round on the kept model. Needs the demo extra (the model and corpus
packages).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: the repository root first, not bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=2000, help="train examples at the site")
    parser.add_argument("--threads", type=int, default=1, help="FEDTUNE_TORCH_THREADS")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="training.gradient_checkpointing"
    )
    parser.add_argument("--lora-dropout", type=float, default=0.05, help="peft.dropout (0: no input copies)")
    parser.add_argument(
        "--keep-malloc-default",
        action="store_true",
        help="skip worker.memory.return_freed_memory (as before)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    os.environ["FEDTUNE_TORCH_THREADS"] = str(args.threads)
    phases: list[dict[str, Any]] = []

    def mark(phase: str, started: float) -> None:
        phases.append(
            {"phase": phase, "rss_mb": round(rss_mb(), 1), "peak_mb": round(peak_mb(), 1),
             "seconds": round(time.perf_counter() - started, 2)}
        )  # fmt: skip
        print(
            f"{phase:<34} rss {phases[-1]['rss_mb']:>8.1f} MB  peak {phases[-1]['peak_mb']:>8.1f} MB",
            flush=True,
        )

    started = time.perf_counter()
    if not args.keep_malloc_default:  # what the worker daemon does at start
        from worker.memory import return_freed_memory

        return_freed_memory()
    mark("interpreter", started)
    import torch  # noqa: F401

    mark("import torch", started)
    from demo.assets import bbc_news_dir, minilm_model_dir
    from demo.data import read_corpus, write_jsonl
    from worker.model_factory import ModelFactory
    from worker.tasks import run_init, run_train

    mark("import transformers, peft, worker", started)
    labels, articles = read_corpus(bbc_news_dir())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "models").mkdir()
        (root / "models" / "all-MiniLM-L6-v2").symlink_to(minilm_model_dir())
        data = root / "data"
        data.mkdir()
        write_jsonl(data / "train.jsonl", articles[: args.examples])
        write_jsonl(data / "eval.jsonl", articles[args.examples : args.examples + 200])
        from demo.spec import demo_spec_yaml
        from fedtune.spec import load_spec_yaml

        base = load_spec_yaml(demo_spec_yaml(labels, rounds=args.rounds, local_steps=20))
        spec = base.model_copy(
            update={
                "training": base.training.model_copy(
                    update={"gradient_checkpointing": args.gradient_checkpointing}
                ),
                "peft": base.peft.model_copy(update={"dropout": args.lora_dropout}),
            }
        )
        models = ModelFactory()
        init = run_init(spec, root / "models", models=models, device="cpu")
        mark("model built (run_init)", started)
        from fedtune.tensorstream.safetensors_file import write_safetensors

        write_safetensors(root / "global.safetensors", init.arrays)
        for round_number in range(1, args.rounds + 1):
            out = run_train(
                spec, 0, round_number, root / "global.safetensors", data, root / "models",
                models=models, site="a", progress=lambda _: None, device="cpu",
            )  # fmt: skip
            mark(f"round {round_number} (train + eval)", started)
        reported = out.metrics.get("worker_peak_rss_mb")
        print(f"worker_peak_rss_mb reported by the task: {reported}")
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "phases": phases}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
