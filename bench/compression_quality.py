"""Summarise the BBC News accuracy runs of bench/results/compression-quality/ (one `fedtune bench
quality` run per upload encoding, see its run.sh) into summary.json and summary.md.

    python bench/compression_quality.py [bench/results/compression-quality]

Per encoding: test accuracy after each round, final accuracy and its difference from fp32, and the
bytes each site actually uploaded per finetune round (the coordinator's received_bytes, not the
model size), mean over sites and rounds.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

RUNS = [("fp32", "fp32 (today)"), ("bf16", "bf16"), ("int8", "int8, block 256"), ("topk10", "top-k 10 %, EF")]


def summarise(folder: Path) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for name, label in RUNS:
        path = folder / name / "quality.json"
        if not path.is_file():
            rows.append({"run": name, "encoding": label, "missing": True})
            continue
        data = json.loads(path.read_text())
        (method,) = data["methods"].values()
        (run,) = method["federated"].values()
        rounds = run["rounds"]
        uploads = [
            site["received_bytes"]
            for r in rounds
            if r["stage"] != "head" and r["round"] > 0
            for site in r["site_metrics"].values()
            if "received_bytes" in site
        ]
        rows.append(
            {
                "run": name,
                "encoding": label,
                "transport": data["config"].get("transport", {}),
                "accuracy_per_round": [round(r["test_accuracy"] * 100, 1) for r in rounds],
                "final_test_accuracy": round(run["final_test_accuracy"] * 100, 1),
                "upload_bytes_per_site_per_round": round(statistics.mean(uploads)) if uploads else None,
                "seconds": round(run["seconds"]),
            }
        )
    fp32 = next((r for r in rows if r["run"] == "fp32" and not r.get("missing")), None)
    for row in rows:
        if fp32 is not None and not row.get("missing"):
            row["accuracy_vs_fp32"] = round(row["final_test_accuracy"] - fp32["final_test_accuracy"], 1)
            if row["upload_bytes_per_site_per_round"] and fp32["upload_bytes_per_site_per_round"]:
                row["bytes_vs_fp32"] = round(
                    fp32["upload_bytes_per_site_per_round"] / row["upload_bytes_per_site_per_round"], 2
                )
    return {"runs": rows}


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "| encoding | test accuracy: initial · after head round · finetune rounds | final | vs fp32 "
        "| upload / site / round | × smaller |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in summary["runs"]:
        if r.get("missing"):
            lines.append(f"| {r['encoding']} | not run | | | | |")
            continue
        lines.append(
            f"| {r['encoding']} | {' · '.join(str(a) for a in r['accuracy_per_round'])} | "
            f"{r['final_test_accuracy']} | {r.get('accuracy_vs_fp32', 0):+} | "
            f"{r['upload_bytes_per_site_per_round']:,} B | {r.get('bytes_vs_fp32', 1.0)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    folder = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).resolve().parent / "results" / "compression-quality"
    )
    summary = summarise(folder)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (folder / "summary.md").write_text(markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main()
