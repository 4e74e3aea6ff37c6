"""`fedtune bench report` for generative experiments (task instruction or causal-lm).

Per round: the global adapter's held-out loss, perplexity, exact match and ROUGE-L on the user's test
file (`bench.generative_scoring`), next to each site's own eval figures as its worker reported them
(eval_loss, eval_perplexity, and with `evaluation.generate` eval_exact_match and eval_rouge_l).
Writes report.json, report.md and report.png like the classification report.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from admin.client import AdminClient
from admin.render import fmt_bytes
from bench.generative_scoring import generate_settings, load_generative_test, score_generative_versions
from bench.report import pct
from fedtune.spec import ExperimentSpec

SITE_METRICS = ("eval_loss", "eval_perplexity", "eval_exact_match", "eval_rouge_l")
PERCENT_METRICS = ("eval_exact_match", "eval_rouge_l", "test_exact_match", "test_rouge_l")


def build_generative_report(
    admin: AdminClient,
    experiment_id: str,
    experiment: Any,
    spec: ExperimentSpec,
    model_root: Path,
    test_file: Path,
    work: Path,
) -> dict[str, Any]:
    test = load_generative_test(spec, test_file)
    scored = score_generative_versions(admin, experiment_id, spec, model_root, test, work / "exports")
    sites = sorted({site for row in scored["rounds"] for site in row["site_metrics"]})
    settings = generate_settings(spec)
    return {
        "report": "generative",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "experiment": {
            "id": experiment_id,
            "name": spec.name,
            "state": experiment.state,
            "task": spec.task,
            "base_model": spec.base_model.name,
            "stages": [
                {"name": s.stage_name, "kind": s.kind, "rounds": s.rounds, "strategy": s.strategy.name}
                for s in spec.stages
            ],
        },
        "test": {
            "file": str(test_file),
            "examples": len(test),
            "generate": settings.model_dump() if spec.task == "instruction" else None,
        },
        "sites": sites,
        "rounds": scored["rounds"],
        "final": scored["final"],
        "best_test_exact_match": scored["best_exact_match"],
        "upload_bytes_per_site_per_round": scored["upload_bytes_per_site_per_round"],
    }


def _cell(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    return pct(value) if key in PERCENT_METRICS else f"{value:.4f}"


def markdown(report: dict[str, Any]) -> str:
    experiment, rounds, sites = report["experiment"], report["rounds"], report["sites"]
    final = report["final"]
    generate = report["test"]["generate"]
    lines = [
        f"# Experiment {experiment['name']} ({experiment['id']}, {experiment['state']})",
        "",
        f"Task {experiment['task']}, base model {experiment['base_model']}. Held-out test set: "
        f"{report['test']['examples']} examples from {report['test']['file']}.",
    ]
    if generate is not None:
        lines.append(
            f"Generation: greedy, at most {generate['max_new_tokens']} new tokens, the first "
            f"{generate['examples']} test examples; exact match and ROUGE-L (F) in %."
        )
    lines += [
        "",
        f"Final global adapter: loss {_cell('test_loss', final.get('test_loss'))}, perplexity "
        f"{_cell('test_perplexity', final.get('test_perplexity'))}, exact match "
        f"{_cell('test_exact_match', final.get('test_exact_match'))} %, ROUGE-L "
        f"{_cell('test_rouge_l', final.get('test_rouge_l'))} %; upload per site per round "
        f"{fmt_bytes(report['upload_bytes_per_site_per_round'])}.",
        "",
        "## Global adapter on the test set (round 0 = the initial adapter)",
        "",
        "| round | stage | loss | perplexity | exact match % | ROUGE-L % |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in rounds:
        cells = [str(row["round"]), f"{row['stage']} {row['stage_round']}"]
        cells += [
            _cell(k, row[k]) for k in ("test_loss", "test_perplexity", "test_exact_match", "test_rouge_l")
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for key in SITE_METRICS:
        if not any(key in m for row in rounds for m in row["site_metrics"].values()):
            continue
        unit = " %" if key in PERCENT_METRICS else ""
        lines += [
            "",
            f"## {key}{unit} per site (each site's model after local training, on its own eval file)",
            "",
            "| round | " + " | ".join(sites) + " |",
            "|---:|" + "---:|" * len(sites),
        ]
        for row in rounds[1:]:
            cells = [_cell(key, row["site_metrics"].get(s, {}).get(key)) for s in sites]
            lines.append(f"| {row['round']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """Left: held-out loss (global bold, sites thin); right: exact match and ROUGE-L of the global adapter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds, sites = report["rounds"], report["sites"]
    fig, (loss_ax, gen_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    xs = [r["round"] for r in rounds]
    loss_ax.plot(xs, [r["test_loss"] for r in rounds], "o-", color="black", lw=2, label="global, test set")
    for site in sites:
        points = [
            (r["round"], r["site_metrics"][site]["eval_loss"])
            for r in rounds
            if "eval_loss" in r["site_metrics"].get(site, {})
        ]
        if points:
            loss_ax.plot(*zip(*points, strict=True), ".--", lw=1, alpha=0.7, label=f"{site} (own eval)")
    loss_ax.set_ylabel("held-out loss (assistant tokens)")
    for key, label in (("test_exact_match", "exact match"), ("test_rouge_l", "ROUGE-L")):
        values = [(r["round"], r[key]) for r in rounds if r.get(key) is not None]
        if values:
            gen_ax.plot(*zip(*values, strict=True), "o-", lw=2, label=f"global, {label}")
    gen_ax.set_ylim(0, 1.02)
    gen_ax.set_ylabel("score on the test set")
    for ax, title in ((loss_ax, "loss"), (gen_ax, "generation")):
        ax.set_title(f"{report['experiment']['name']}: {title} per round")
        ax.set_xlabel("round (0 = initial adapter)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
