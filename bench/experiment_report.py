"""`fedtune bench report`: held-out accuracy per round of any classification experiment in a registry.

Generative experiments (task instruction or causal-lm) get loss, perplexity, exact match and ROUGE-L
instead (bench/generative_report.py); `build_report` picks by the spec's task.

The benchmark scores experiments it runs itself; this scores one that users ran on their own sites.
Every finetune version (round 0 = the initial adapter) is exported over the Admin API and evaluated
on a labelled test file the user holds (the spec's text and label fields), next to each site's own
eval accuracy as its worker reported it. Writes report.json (every figure), report.md (the table)
and report.png (the plot). Needs torch (it runs the model), not the coordinator's database.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from admin.client import AdminClient
from admin.render import fmt_bytes
from bench.report import pct, per_round_table, write_files
from bench.scoring import score_finetune_versions
from demo.data import Article
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import ExperimentSpec, load_spec_yaml


def load_test_articles(spec: ExperimentSpec, test_file: Path) -> list[Article]:
    """The labelled test file, read with the spec's fields (file:line errors, as a worker reports them)."""
    from worker.data import load_examples

    labels = list(spec.labels or [])
    examples = load_examples(
        test_file, text_field=spec.data.text_field, label_field=spec.data.label_field, labels=labels
    )
    return [Article(e.text, labels[e.label]) for e in examples if e.label is not None]


def build_report(
    admin: AdminClient, experiment_id: str, model_root: Path, test_file: Path, work: Path
) -> dict[str, Any]:
    """Score every finetune version of `experiment_id` on `test_file`; the report as a JSON-able dict."""
    experiment = admin.get_experiment(experiment_id)
    spec = load_spec_yaml(experiment.spec_yaml)
    if not (model_root / spec.base_model.name).is_dir():
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"--model-root {model_root} has no folder {spec.base_model.name!r}, the experiment's base model",
        )
    if spec.task != "sequence-classification":
        from bench.generative_report import build_generative_report

        return build_generative_report(admin, experiment_id, experiment, spec, model_root, test_file, work)
    test = load_test_articles(spec, test_file)
    scored = score_finetune_versions(admin, experiment_id, spec, model_root, test, work / "exports")
    sites = sorted({site for row in scored["rounds"] for site in row["site_metrics"]})
    return {
        "report": "experiment",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "experiment": {
            "id": experiment_id,
            "name": spec.name,
            "state": experiment.state,
            "base_model": spec.base_model.name,
            "stages": [
                {"name": s.stage_name, "kind": s.kind, "rounds": s.rounds, "strategy": s.strategy.name}
                for s in spec.stages
            ],
        },
        "test": {"file": str(test_file), "examples": len(test)},
        "sites": sites,
        "rounds": scored["rounds"],
        "final_test_accuracy": scored["final_test_accuracy"],
        "best_test_accuracy": scored["best_test_accuracy"],
        "upload_bytes_per_site_per_round": scored["upload_bytes_per_site_per_round"],
        "final_test_accuracy_on_original_base": scored["final_test_accuracy_on_original_base"],
    }


def markdown(report: dict[str, Any]) -> str:
    experiment, rounds = report["experiment"], report["rounds"]
    stages = ", ".join(
        f"{s['name']} ({s['kind']}, {s['rounds']} x {s['strategy']})" for s in experiment["stages"]
    )
    final, best = report["final_test_accuracy"], report["best_test_accuracy"]
    lines = [
        f"# Experiment {experiment['name']} ({experiment['id']}, {experiment['state']})",
        "",
        f"Base model {experiment['base_model']}; stages: {stages}.",
        f"Held-out test set: {report['test']['examples']} examples from {report['test']['file']}.",
        "",
        f"Final test accuracy {pct(final)} %, best {pct(best)} %; upload per site per round "
        f"{fmt_bytes(report['upload_bytes_per_site_per_round'])}.",
        "Site columns: each site's accuracy on its own eval file, as its worker reported it.",
    ]
    if report.get("final_test_accuracy_on_original_base") is not None:
        lines.append(
            "Test accuracy is on the merged base (base + the global stage's LoRA); the final adapter on "
            f"the original base: {pct(report['final_test_accuracy_on_original_base'])} %."
        )
    lines += per_round_table("per round", rounds, report["sites"])
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """Held-out test accuracy per round (bold) and each site's own eval accuracy (thin)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = report["rounds"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(
        [r["round"] for r in rounds],
        [r["test_accuracy"] for r in rounds],
        "o-",
        color="black",
        lw=2,
        label="global model, held-out test set",
    )
    for site in report["sites"]:
        points = [
            (r["round"], r["site_metrics"][site]["eval_accuracy"])
            for r in rounds
            if "eval_accuracy" in r["site_metrics"].get(site, {})
        ]
        if points:
            ax.plot(*zip(*points, strict=True), ".--", lw=1, alpha=0.7, label=f"{site} (own eval)")
    ax.set_title(f"{report['experiment']['name']}: accuracy per round")
    ax.set_xlabel("round (0 = initial adapter)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    if report["report"] == "generative":
        from bench import generative_report

        return write_files(out_dir, "report", report, generative_report.markdown, generative_report.plot)
    return write_files(out_dir, "report", report, markdown, plot)
