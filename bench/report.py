"""Write a benchmark's results: quality.json (every figure), quality.md (table), quality.png (plot)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from admin.render import fmt_bytes


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown_table(results: dict[str, Any]) -> str:
    """One row per (method, configuration): final/best test accuracy, site eval accuracy, upload."""
    cfg = results["config"]
    lines = [
        f"# Quality benchmark: {cfg['model_name']}, {cfg['sites']} sites, Dirichlet alpha {cfg['alpha']}",
        "",
        f"{cfg['rounds']} rounds x {cfg['local_steps']} local steps x batch {cfg['batch_size']}; "
        f"budget: {results['budget']['federated_examples_seen']} examples seen per configuration. "
        f"Test set: {results['data']['test_examples']} held-out articles.",
        "",
        *_logit_adjustment_line(cfg),
        "| method | configuration | final test acc % | best test acc % | mean site eval acc % (last round) "
        "| upload / site / round | % of base params |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for method, block in results["methods"].items():
        params = block["parameters"]
        share = 100 * params["uploaded_parameters"] / max(1, params["base_model_parameters"])
        for name, base in block["baselines"].items():
            accuracy = base.get("test_accuracy", base.get("test_accuracy_mean"))
            lines.append(f"| {method} | {name} | {pct(accuracy)} | - | - | 0 B | - |")
        for label, run in block["federated"].items():
            last = run["rounds"][-1] if run["rounds"] else {}
            cells = [
                method,
                label,
                pct(run["final_test_accuracy"]),
                pct(run["best_test_accuracy"]),
                pct(last.get("mean_site_eval_accuracy")),
                fmt_bytes(run["upload_bytes_per_site_per_round"]),
                f"{share:.3f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "local-only: mean over sites of each site's own model on the test set."]
    lines += _per_round_tables(results)
    lines += _global_stage_tables(results)
    return "\n".join(lines) + "\n"


def _logit_adjustment_line(cfg: dict[str, Any]) -> list[str]:
    tau = cfg.get("logit_adjustment") or 0.0
    if not tau:
        return ["Local training: plain cross-entropy (no logit adjustment).", ""]
    return [
        f"Local training: logit adjustment tau {tau} (CE on logits + tau x log site label prior) in "
        "federated and local-only runs; centralized uses plain cross-entropy.",
        "",
    ]


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _global_stage_tables(results: dict[str, Any]) -> list[str]:
    """Per run with a global stage: held-out LM loss of the base, then after each global round."""
    lines: list[str] = []
    for method, block in results["methods"].items():
        for label, run in block["federated"].items():
            stage = run.get("global_stage")
            if not stage:
                continue
            key = stage["loss_key"]
            lines += [
                "",
                f"## {method} / {label}: global stage: held-out {key} base -> after round r",
                "",
                f"| round | sites' {key} (after local training) | lower than base? "
                f"| aggregated global model {key} | lower than base? |",
                "|---:|---:|:---:|---:|:---:|",
                f"| base | {_loss(stage['base_loss'])} | | {_loss(stage['base_loss_aggregated_eval'])} | |",
            ]
            for row in stage["rounds"]:
                cells = [
                    str(row["round"]),
                    _loss(row[key]),
                    _yes(row["decreased_vs_base"]),
                    _loss(row["aggregated_" + key]),
                    _yes(row["aggregated_decreased_vs_base"]),
                ]
                lines.append("| " + " | ".join(cells) + " |")
            merged = pct(run["final_test_accuracy"])
            original = pct(stage.get("final_test_accuracy_on_original_base"))
            lines += [
                "",
                f"Finetune test accuracy is on the merged base (base + global LoRA): final {merged}% "
                f"(the same adapter on the original base: {original}%).",
            ]
    return lines


def _yes(flag: bool | None) -> str:
    return "-" if flag is None else ("yes" if flag else "no")


def _per_round_tables(results: dict[str, Any]) -> list[str]:
    """Per federated run: global test accuracy and each site's local eval accuracy, round by round."""
    sites = list(results["data"]["sites"])
    lines: list[str] = []
    for method, block in results["methods"].items():
        for label, run in block["federated"].items():
            lines += per_round_table(f"{method} / {label}: per round", run["rounds"], sites)
    return lines


def per_round_table(title: str, rows: list[dict[str, Any]], sites: list[str]) -> list[str]:
    """Markdown lines: round, stage, held-out test accuracy, mean and per-site eval accuracy."""
    lines = [
        "",
        f"## {title}",
        "",
        "| round | stage | test acc % | mean site eval acc % | " + " | ".join(sites) + " |",
        "|---:|---|---:|---:|" + "---:|" * len(sites),
    ]
    for row in rows:
        per_site = [pct(row["site_metrics"].get(s, {}).get("eval_accuracy")) for s in sites]
        stage = f"{row.get('stage', 'finetune')} {row.get('stage_round', row['round'])}"
        head = [str(row["round"]), stage, pct(row["test_accuracy"]), pct(row["mean_site_eval_accuracy"])]
        lines.append("| " + " | ".join(head + per_site) + " |")
    return lines


def plot(results: dict[str, Any], path: Path) -> None:
    """Test accuracy per round per configuration; one panel per PEFT method, baselines as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    methods = list(results["methods"])
    with_global = any(
        run.get("global_stage")
        for block in results["methods"].values()
        for run in block["federated"].values()
    )
    rows = 2 if with_global else 1
    fig, axes = plt.subplots(rows, len(methods), figsize=(6 * len(methods), 4.5 * rows), squeeze=False)
    if with_global:
        for ax, method in zip(axes[1], methods, strict=True):
            _plot_global(ax, method, results["methods"][method])
    for ax, method in zip(axes[0], methods, strict=True):
        block = results["methods"][method]
        for label, run in block["federated"].items():
            xs = [r["round"] for r in run["rounds"]]
            ax.plot(xs, [r["test_accuracy"] for r in run["rounds"]], marker="o", label=label)
        baselines = block["baselines"]
        if "centralized" in baselines:
            ax.axhline(baselines["centralized"]["test_accuracy"], color="black", ls="--", label="centralized")
        if "local-only" in baselines:
            ax.axhline(
                baselines["local-only"]["test_accuracy_mean"], color="grey", ls=":", label="local-only (mean)"
            )
        ax.set_title(method)
        ax.set_xlabel("round")
        ax.set_ylabel("held-out test accuracy")
        ax.set_ylim(0, 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_global(ax: Any, method: str, block: dict[str, Any]) -> None:
    """Global stage: held-out LM loss, round 0 = the base; solid = aggregated model, dashed = sites'."""
    from matplotlib.ticker import MaxNLocator

    for label, run in block["federated"].items():
        stage = run.get("global_stage")
        if not stage:
            continue
        key = stage["loss_key"]
        rows = stage["rounds"]
        xs = [0] + [r["round"] for r in rows]
        aggregated = [stage["base_loss_aggregated_eval"]] + [r["aggregated_" + key] for r in rows]
        local = [stage["base_loss"]] + [r[key] for r in rows]
        (line,) = ax.plot(xs, aggregated, marker="o", label=f"{label} (aggregated)")
        ax.plot(xs, local, marker="x", ls="--", color=line.get_color(), label=f"{label} (sites, local)")
        ax.set_ylabel(f"held-out {key}")
    ax.set_title(f"{method}: global stage (round 0 = base)")
    ax.set_xlabel("global round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def write_files(
    out_dir: Path,
    stem: str,
    document: dict[str, Any],
    markdown: Callable[[dict[str, Any]], str],
    plot: Callable[[dict[str, Any], Path], None],
) -> dict[str, Path]:
    """OUT/STEM.json (every figure), OUT/STEM.md and OUT/STEM.png, made from `document`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / f"{stem}.json",
        "markdown": out_dir / f"{stem}.md",
        "plot": out_dir / f"{stem}.png",
    }
    paths["json"].write_text(json.dumps(document, indent=2, default=str) + "\n")
    paths["markdown"].write_text(markdown(document))
    plot(document, paths["plot"])
    return paths


def write_outputs(results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    return write_files(out_dir, "quality", results, markdown_table, plot)
