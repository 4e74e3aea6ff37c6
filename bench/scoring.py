"""Score every round's global model of a finished experiment on a held-out test set.

Only the Admin API is used (`ListModels`, `ListRounds`, `ExportModel`): the benchmark and
`fedtune bench report` score experiments the same way, and neither opens the coordinator's database.
Each finetune version is exported and loaded with `PeftModel.from_pretrained` on the site-style base
(`<model_root>/<base_model.name>`); a version trained on a global stage's merged base
(`base_version.json` in its export) is scored on that merged base (`bench.global_eval`).
Per-site figures come from each round's accepted updates (`RoundInfo.site_updates`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from admin.client import AdminClient
from bench import global_eval
from demo.data import Article
from demo.evaluate import test_accuracy
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import ExperimentSpec
from fedtune.v1 import admin_pb2

SiteFigures = dict[tuple[int, int], dict[str, dict[str, float]]]


def site_figures(rounds: Sequence[admin_pb2.RoundInfo]) -> SiteFigures:
    """(stage index, round) -> site -> its reported metrics, received_bytes and num_examples."""
    out: SiteFigures = {}
    for info in rounds:
        for update in info.site_updates:
            figures = dict(update.metrics)
            figures.update(
                received_bytes=float(update.received_bytes), num_examples=float(update.num_examples)
            )
            out.setdefault((info.stage_index, info.round), {})[update.site] = figures
    return out


def manifest_bytes(version: admin_pb2.ModelVersion) -> int:
    return int(sum(t.nbytes for t in version.manifest.tensors))


def export_global_versions(
    admin: AdminClient, spec: ExperimentSpec, versions: Sequence[admin_pb2.ModelVersion], export_root: Path
) -> dict[str, Path]:
    """Version id -> exported adapter file of each version of the experiment's global stage (if any)."""
    names = {s.stage_name for s in spec.stages if s.kind == "global"}
    files: dict[str, Path] = {}
    for version in (v for v in versions if v.stage in names):
        out_dir = export_root / f"v{version.version}-global"
        admin.export_model(version.version_id, out_dir)
        files[version.version_id] = out_dir / global_eval.ADAPTER_FILE
    return files


def score_finetune_versions(
    admin: AdminClient,
    experiment_id: str,
    spec: ExperimentSpec,
    model_root: Path,
    test: list[Article],
    export_root: Path,
) -> dict[str, Any]:
    """Held-out test accuracy of every finetune version (round 0 = the initial adapter), with each
    round's mean and per-site metrics and upload sizes. Keys: rounds, final_test_accuracy,
    best_test_accuracy, upload_bytes_per_site_per_round, global_files (version id -> file), and
    final_test_accuracy_on_original_base when the versions were trained on a global stage's base."""
    if spec.task != "sequence-classification" or not spec.labels:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"experiment {experiment_id} is {spec.task}: only sequence-classification experiments have a "
            "test accuracy to report",
        )
    versions = sorted(admin.list_models(experiment_id), key=lambda v: v.version)
    global_files = export_global_versions(admin, spec, versions, export_root)
    # every finetune stage's versions in order: a fedncm head stage (1 round) may precede the main one
    stage_index_by_name = {s.stage_name: i for i, s in enumerate(spec.stages) if s.kind == "finetune"}
    versions = [v for v in versions if v.stage in stage_index_by_name]
    round_infos = admin.list_rounds(experiment_id)
    rounds_by_version = {r.model_version_id: r for r in round_infos}
    per_site = site_figures(round_infos)
    model_dir = model_root / spec.base_model.name
    labels = list(spec.labels)
    rows: list[dict[str, Any]] = []
    accuracies: list[float] = []
    original_base_accuracy: float | None = None
    for step, version in enumerate(versions):
        out_dir = export_root / f"v{version.version}"
        admin.export_model(version.version_id, out_dir)
        base_id = global_eval.base_version_id(out_dir)
        if base_id is not None:
            if base_id not in global_files:
                raise FedtuneError(
                    ErrorCode.NOT_FOUND,
                    f"v{version.version} names base version {base_id}, not a global version",
                )
            accuracy = global_eval.merged_base_test_accuracy(
                spec, model_root, global_files[base_id], out_dir, labels, test
            )
            if version is versions[-1]:
                original_base_accuracy = test_accuracy(model_dir, out_dir, labels, test)
        else:
            accuracy = test_accuracy(model_dir, out_dir, labels, test)
        accuracies.append(accuracy)
        info = rounds_by_version.get(version.version_id)
        metrics = dict(info.metrics) if info is not None else {}
        upload = manifest_bytes(version)
        trained = version.round > 0
        rows.append(
            {
                "version": int(version.version),
                # rounds are counted over the finetune stages (a head stage's round comes first)
                "round": step,
                "stage": version.stage,
                "stage_round": int(version.round),
                "test_accuracy": accuracy,
                "test_accuracy_base": "merged" if base_id is not None else "original",
                "sites": sorted(version.sites),
                "mean_train_loss": metrics.get("train_loss"),
                "mean_site_eval_accuracy": metrics.get("eval_accuracy"),
                "site_metrics": per_site.get((stage_index_by_name[version.stage], int(version.round)), {})
                if trained
                else {},
                "upload_bytes_per_site": upload if trained else 0,
                "upload_bytes_total": upload * len(version.sites) if trained else 0,
            }
        )
        print(
            f"  v{version.version} ({version.stage} round {version.round}): test accuracy {accuracy:.4f}",
            file=sys.stderr,
        )
    return {
        "rounds": rows,
        "final_test_accuracy": accuracies[-1] if accuracies else None,
        "best_test_accuracy": max(accuracies, default=None),
        "upload_bytes_per_site_per_round": manifest_bytes(versions[-1]) if versions else 0,
        "global_files": global_files,
        "final_test_accuracy_on_original_base": original_base_accuracy,
    }
