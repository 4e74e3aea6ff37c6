"""The functional benchmark's outputs: llm-functional.json (every figure), .md (tables), .png (plot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report import pct, write_files


def _row(label: str, scores: dict[str, Any], skills: list[str]) -> str:
    per_skill = scores.get("exact_match_per_skill", {})
    cells = [
        label,
        pct(scores.get("exact_match")),
        pct(scores.get("rouge_l")),
        f"{scores.get('loss', 0):.3f}",
    ]
    cells += [pct(per_skill.get(s)) for s in skills]
    return "| " + " | ".join(cells) + " |"


def markdown(doc: dict[str, Any]) -> str:
    cfg, base, skills = doc["config"], doc["base_model"], doc["skills"]
    results, federated = doc["results"], doc["federated"]
    lines = [
        "# Functional LLM benchmark: federated instruction tuning of a small Llama",
        "",
        f"Base: Llama architecture, {base['parameters']:,} parameters, word-level tokenizer, trained "
        f"from scratch for {base['config']['steps']} steps ({base['seconds']:.0f} s; loss "
        f"{base['first_loss']:.2f} -> {base['final_loss']:.2f}) on synthetic prose stating "
        f"{len(skills)} attributes of 40 nouns ('cat color is red'). Instruction task: user 'cat color' -> "
        f"assistant 'red'; {len(doc['sites'])} sites, site i asks about attribute i only. LoRA r "
        f"{cfg['rank']}, {cfg['rounds']} rounds x {cfg['local_steps']} local steps x batch "
        f"{cfg['batch_size']}, lr {cfg['learning_rate']}; local-only and centralized see as many examples "
        "as the federated run.",
        f"Test set: {doc['test_examples']} questions (every attribute of {cfg['test_words']} nouns no "
        "instruction example mentions; chance with the right attribute's five values: 20 %); greedy "
        "decoding, exact match and ROUGE-L in %, loss on the answer tokens.",
        f"Machine: {doc['cpu_count']} CPUs shared with other jobs; load average before "
        f"{doc['load_average_before']}, after {doc['load_average_after']}; wall "
        f"{doc['wall_seconds']:.0f} s, CPU "
        f"{doc.get('bench_process_cpu_seconds', 0):.0f} s in the bench process + "
        f"{doc.get('child_process_cpu_seconds', 0):.0f} s in the coordinator and workers. Command: "
        f"`flock /tmp/fedtune-heavy.lock {doc.get('command', 'python bench/llm_functional.py')}`.",
        "",
        "| run | exact match % | ROUGE-L % | loss | " + " | ".join(skills) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(skills),
        _row("base (no tuning)", results["base"], skills),
    ]
    for label, run in federated.items():
        lines.append(_row(f"{label} (final round)", run["rounds"][-1], skills))
    if "local-only" in results:
        local = results["local-only"]
        mean = {
            "exact_match": local["exact_match_mean"],
            "rouge_l": local["rouge_l_mean"],
            "loss": local["loss_mean"],
        }
        lines.append(_row("local-only (mean over sites)", mean, skills))
        for site, scores in local["sites"].items():
            lines.append(_row(f"local-only {site}", scores, skills))
    if "centralized" in results:
        lines.append(_row("centralized", results["centralized"], skills))
    for label, reason in doc["skipped"].items():
        lines += ["", f"**{label} skipped**: {reason}"]
    for label, run in federated.items():
        sites = doc["sites"]
        lines += [
            "",
            f"## {label}: per round (round 0 = the initial adapter = the base)",
            "",
            "| round | test exact match % | test ROUGE-L % | test loss | "
            + " | ".join(f"{s} own eval EM %" for s in sites)
            + " |",
            "|---:|---:|---:|---:|" + "---:|" * len(sites),
        ]
        for row in run["rounds"]:
            own = [pct(row["site_eval_exact_match"].get(s)) for s in sites]
            head = [str(row["round"]), pct(row["exact_match"]), pct(row["rouge_l"]), f"{row['loss']:.3f}"]
            lines.append("| " + " | ".join(head + own) + " |")
    samples = (federated.get("federated") or {}).get("rounds", [{}])[-1].get("sample_replies", [])
    if samples:
        lines += ["", "Sample replies of the final federated adapter:", ""]
        lines += [f"- `{s['prompt']}` -> `{s['reply']}` (reference `{s['reference']}`)" for s in samples]
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> None:
    """Held-out exact match per round of the federated variants; base, local-only, centralized as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    results = doc["results"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, run in doc["federated"].items():
        rows = run["rounds"]
        ax.plot(
            [r["round"] for r in rows], [r["exact_match"] for r in rows], "o-", lw=2, label=f"{label} LoRA"
        )
    ax.axhline(results["base"]["exact_match"], color="grey", ls=":", label="base")
    if "centralized" in results:
        ax.axhline(results["centralized"]["exact_match"], color="black", ls="--", label="centralized")
    if "local-only" in results:
        ax.axhline(
            results["local-only"]["exact_match_mean"], color="tab:red", ls="-.", label="local-only (mean)"
        )
    ax.set_title("Held-out exact match (all skills, held-out words)")
    ax.set_xlabel("round (0 = base)")
    ax.set_ylabel("exact match")
    ax.set_ylim(0, 1.02)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(doc: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    return write_files(out_dir, "llm-functional", doc, markdown, plot)
