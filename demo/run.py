"""`make demo`: a real federated run on one machine.

BBC News is split into a held-out test set and 4 sites with a Dirichlet label skew; a coordinator
(SQLite + local blobs) and 4 worker processes run on 127.0.0.1 with the real CLIs; a LoRA experiment
on all-MiniLM-L6-v2 runs to completion; every round's global adapter is exported and scored on the
test set; the last one is loaded with ``PeftModel.from_pretrained`` and classifies a sentence.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from admin.client import AdminClient
from demo.assets import bbc_news_dir, minilm_model_dir
from demo.data import dirichlet_sites, read_corpus, read_jsonl, write_jsonl
from demo.evaluate import load_classifier, predict, test_accuracy
from demo.processes import ProcessGroup, free_port
from demo.progress import follow_experiment, wait_for_coordinator
from demo.spec import MODEL_NAME, demo_spec_yaml

console = Console()
SAMPLE_SENTENCE = "The central bank raised interest rates as inflation and company profits climbed."


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m demo",
        description="Federated LoRA fine-tuning of all-MiniLM-L6-v2 on BBC News across non-IID sites.",
        epilog="Example: python -m demo --rounds 6 --local-steps 20 --alpha 0.5",
    )
    parser.add_argument("--dir", type=Path, default=Path("demo-run"), help="work folder (default ./demo-run)")
    parser.add_argument("--sites", type=int, default=4, help="number of sites (default 4)")
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet label-skew alpha (default 0.5)")
    parser.add_argument("--rounds", type=int, default=6, help="federated rounds (default 6)")
    parser.add_argument(
        "--local-steps", type=int, default=20, help="local steps per site per round (default 20)"
    )
    parser.add_argument("--strategy", default="fedavg", help="aggregation strategy (default fedavg)")
    parser.add_argument("--timeout", type=float, default=1800, help="give up after this many seconds")
    return parser.parse_args(argv)


def _prepare(work: Path, num_sites: int, alpha: float) -> tuple[list[str], Path]:
    labels, articles = read_corpus(bbc_news_dir())
    test, sites = dirichlet_sites(articles, labels, num_sites, alpha, seed=0)
    write_jsonl(work / "test.jsonl", test)
    table = Table(title=f"BBC News: {len(articles)} articles, {len(test)} held out; train split per site")
    table.add_column("site")
    for label in labels:
        table.add_column(label, justify="right")
    table.add_column("train", justify="right")
    table.add_column("eval", justify="right")
    for site in sites:
        write_jsonl(work / "sites" / site.name / "train.jsonl", site.train)
        write_jsonl(work / "sites" / site.name / "eval.jsonl", site.eval)
        table.add_row(
            site.name, *map(str, site.label_counts(labels)), str(len(site.train)), str(len(site.eval))
        )
    console.print(table)
    models = work / "models"
    models.mkdir(parents=True, exist_ok=True)
    link = models / MODEL_NAME
    if not link.exists():
        link.symlink_to(minilm_model_dir(), target_is_directory=True)
    return labels, models


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    started = time.monotonic()
    work: Path = args.dir.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    console.rule("fedtune demo: federated LoRA on MiniLM + BBC News")
    labels, model_root = _prepare(work, args.sites, args.alpha)
    port = free_port()
    target = f"127.0.0.1:{port}"
    threads = str(max(1, (os.cpu_count() or 2) // args.sites))
    with ProcessGroup(work / "logs") as group, AdminClient(target, timeout=30) as admin:
        group.start(
            "coordinator",
            ["coordinator", "serve", "--port", str(port), "--data-dir", str(work / "coordinator")],
        )
        wait_for_coordinator(admin, group)
        console.print(f"coordinator on {target} (logs in {work / 'logs'})")
        for index in range(args.sites):
            site = f"site-{chr(ord('a') + index)}"
            token = admin.add_site(site).token
            group.start(
                f"worker-{site}",
                [
                    "worker",
                    "run",
                    "--coordinator",
                    target,
                    "--site",
                    site,
                    "--token",
                    token,
                    "--data-root",
                    str(work / "sites" / site),
                    "--model-root",
                    str(model_root),
                ],
                env={"FEDTUNE_TORCH_THREADS": threads},
            )
        spec_yaml = demo_spec_yaml(labels, args.rounds, args.local_steps, args.strategy)
        (work / "experiment.yaml").write_text(spec_yaml)
        experiment = admin.submit_experiment(spec_yaml, start=True)
        console.print(
            f"submitted experiment {experiment.experiment_id} ({args.rounds} rounds, {args.sites} sites)"
        )
        state = follow_experiment(admin, group, experiment.experiment_id, args.timeout, console)
        if state != "completed":
            console.print(f"[red]experiment {state}: {admin.get_experiment(experiment.experiment_id).error}")
            return 1
        versions = sorted(admin.list_models(experiment.experiment_id), key=lambda v: v.version)
        rounds = {r.model_version_id: r for r in admin.list_rounds(experiment.experiment_id)}
        exports = work / "exports"
        test = read_jsonl(work / "test.jsonl")
        table = Table(title="Global model, held-out test accuracy per round")
        for column in ("version", "round", "sites", "mean train loss", "site eval acc", "test accuracy"):
            table.add_column(column, justify="right")
        last_dir = exports
        for version in versions:
            out_dir = exports / f"v{version.version}"
            admin.export_model(version.version_id, out_dir)
            accuracy = test_accuracy(model_root / MODEL_NAME, out_dir, labels, test)
            metrics = rounds[version.version_id].metrics if version.version_id in rounds else {}
            table.add_row(
                str(version.version),
                str(version.round),
                str(len(version.sites)),
                f"{metrics.get('train_loss', float('nan')):.4f}",
                f"{metrics.get('eval_accuracy', float('nan')):.4f}",
                f"{accuracy:.4f}",
            )
            last_dir = out_dir
    console.print(table)
    console.print(f"exported adapter of the last round: {last_dir}")
    tokenizer, model = load_classifier(model_root / MODEL_NAME, last_dir, len(labels))
    label = labels[predict(tokenizer, model, [SAMPLE_SENTENCE])[0]]
    console.print("PeftModel.from_pretrained(base, path) loaded it;")
    console.print(f'  "{SAMPLE_SENTENCE}" -> [bold]{label}[/bold]')
    console.print(f"demo finished in {time.monotonic() - started:.0f} s")
    return 0
