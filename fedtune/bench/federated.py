"""Federated configurations on one local cluster: a real coordinator and one worker process per site.

The cluster is started like `fedtune.demo.run` starts it (same ProcessGroup, free_port, AdminClient
and waits); each configuration is one experiment, run to completion, after which every round's
global version is exported and scored on the held-out test set (`fedtune.demo.evaluate`).
Per-site figures (eval accuracy, bytes received) come from the coordinator's registry: the admin
API reports only the round's example-weighted means. A run with a `global` stage first reports that
stage's LM-loss figures (`fedtune.bench.global_eval`), and its finetune versions are scored on the
merged base they were trained on (base + the global LoRA named by the export's `base_version.json`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtune.admin.client import AdminClient
from fedtune.bench import global_eval
from fedtune.bench.config import spec_yaml
from fedtune.bench.dataset import BenchData
from fedtune.demo.evaluate import test_accuracy
from fedtune.demo.processes import ProcessGroup, free_port
from fedtune.demo.progress import follow_experiment, wait_for_coordinator
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import ExperimentSpec

_REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Cluster:
    admin: AdminClient
    group: ProcessGroup
    database_url: str
    model_root: Path


def _child_env(**extra: str) -> dict[str, str]:
    # The source tree first, as tests/daemon/cluster.py does: an old editable install may map
    # coordinator/ and worker/ as namespace packages.
    path = os.pathsep.join(filter(None, [str(_REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    return {"PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false", **extra}


@contextmanager
def local_cluster(work: Path, data: BenchData, model_root: Path) -> Iterator[Cluster]:
    """Coordinator (SQLite + local blobs) and one worker per site on 127.0.0.1; stopped on exit."""
    port = free_port()
    target = f"127.0.0.1:{port}"
    threads = str(max(1, (os.cpu_count() or 2) // len(data.sites)))
    coordinator_dir = work / "coordinator"
    with ProcessGroup(work / "logs") as group, AdminClient(target, timeout=30) as admin:
        group.start(
            "coordinator",
            ["coordinator", "serve", "--port", str(port), "--data-dir", str(coordinator_dir)],
            env=_child_env(),
        )
        wait_for_coordinator(admin, group)
        for site in data.sites:
            token = admin.add_site(site.name).token
            group.start(
                f"worker-{site.name}",
                [
                    "worker",
                    "run",
                    "--coordinator",
                    target,
                    "--site",
                    site.name,
                    "--token",
                    token,
                    "--data-root",
                    str(data.sites_root / site.name),
                    "--model-root",
                    str(model_root),
                    "--device",
                    "cpu",
                ],
                env=_child_env(FEDTUNE_TORCH_THREADS=threads),
            )
        yield Cluster(admin, group, f"sqlite:///{coordinator_dir.resolve() / 'fedtune.db'}", model_root)


def _manifest_bytes(version: Any) -> int:
    return int(sum(t.nbytes for t in version.manifest.tensors))


def _site_updates(
    database_url: str, experiment_id: str
) -> dict[tuple[int, int], dict[str, dict[str, float]]]:
    """(stage index, round) -> site -> {eval_accuracy, ..., received_bytes} of each accepted update."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from storage.db import make_engine
    from storage.models import Round, Site, Update

    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            rows = session.execute(
                select(
                    Round.stage_index,
                    Round.round,
                    Site.name,
                    Update.metrics,
                    Update.received_bytes,
                    Update.num_examples,
                )
                .join(Round, Update.round_id == Round.id)
                .join(Site, Update.site_id == Site.id)
                .where(Round.experiment_id == experiment_id, Update.state.not_in(["receiving", "rejected"]))
            ).all()
    finally:
        engine.dispose()
    out: dict[tuple[int, int], dict[str, dict[str, float]]] = {}
    for stage_index, round_no, site, metrics, received, examples in rows:
        figures = {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
        figures.update(received_bytes=float(received), num_examples=float(examples))
        out.setdefault((int(stage_index), int(round_no)), {})[site] = figures
    return out


def _global_stage(
    cluster: Cluster,
    spec: ExperimentSpec,
    data: BenchData,
    experiment_id: str,
    versions: list[Any],
    export_root: Path,
) -> tuple[dict[str, Any] | None, dict[str, Path]]:
    """(the global stage's report or None, version id -> exported tensor file of each global version)."""
    global_index = next((i for i, s in enumerate(spec.stages) if s.kind == "global"), None)
    if global_index is None:
        return None, {}
    name = spec.stages[global_index].stage_name
    files: dict[str, Path] = {}
    aggregated: dict[int, dict[str, Any]] = {}
    sites = [s.name for s in data.sites]
    for version in (v for v in versions if v.stage == name):
        out_dir = export_root / f"v{version.version}-global"
        cluster.admin.export_model(version.version_id, out_dir)
        files[version.version_id] = out_dir / global_eval.ADAPTER_FILE
        loss = global_eval.global_lm_loss(
            spec, cluster.model_root, files[version.version_id], data.sites_root, sites
        )
        aggregated[int(version.round)] = loss
        print(
            f"  v{version.version} (global round {version.round}): held-out LM loss {loss['mean']}",
            file=sys.stderr,
        )
    infos = [r for r in cluster.admin.list_rounds(experiment_id) if r.stage_index == global_index]
    per_site = _site_updates(cluster.database_url, experiment_id)
    site_rows = {r: v for (i, r), v in per_site.items() if i == global_index}
    report = global_eval.global_rounds_report(infos, aggregated, site_rows)
    report.update(stage=name, stage_index=global_index, rounds_total=spec.stages[global_index].rounds)
    return report, files


def run_federated(
    cluster: Cluster, spec: ExperimentSpec, data: BenchData, export_root: Path, timeout: float
) -> dict[str, Any]:
    """Run one experiment to completion; per round: test accuracy, mean and per-site metrics, bytes.

    With a global stage first: its LM-loss report under "global_stage", and the finetune rows' test
    accuracy on the merged base ("test_accuracy_base": "merged", else "original").
    """
    started = time.monotonic()
    experiment = cluster.admin.submit_experiment(spec_yaml(spec), start=True)
    experiment_id = experiment.experiment_id
    state = follow_experiment(cluster.admin, cluster.group, experiment_id, timeout)
    if state != "completed":
        error = cluster.admin.get_experiment(experiment_id).error
        raise FedtuneError(ErrorCode.WRONG_STATE, f"experiment {spec.name} ended {state}: {error}")
    train_seconds = time.monotonic() - started
    versions = sorted(cluster.admin.list_models(experiment_id), key=lambda v: v.version)
    global_report, global_files = _global_stage(cluster, spec, data, experiment_id, versions, export_root)
    # every finetune stage's versions in order: a fedncm head stage (1 round) may precede the main one
    stage_index_by_name = {s.stage_name: i for i, s in enumerate(spec.stages) if s.kind == "finetune"}
    finetune = spec.stages[max(stage_index_by_name.values())]
    versions = [v for v in versions if v.stage in stage_index_by_name]
    rounds = {r.model_version_id: r for r in cluster.admin.list_rounds(experiment_id)}
    per_site = _site_updates(cluster.database_url, experiment_id)
    model_dir = cluster.model_root / spec.base_model.name
    labels = spec.labels or []
    rows: list[dict[str, Any]] = []
    accuracies: list[float] = []
    original_base_accuracy: float | None = None
    for step, version in enumerate(versions):
        out_dir = export_root / f"v{version.version}"
        cluster.admin.export_model(version.version_id, out_dir)
        base_id = global_eval.base_version_id(out_dir)
        if base_id is not None:
            if base_id not in global_files:
                raise FedtuneError(
                    ErrorCode.NOT_FOUND,
                    f"v{version.version} names base version {base_id}, not a global version",
                )
            accuracy = global_eval.merged_base_test_accuracy(
                spec, cluster.model_root, global_files[base_id], out_dir, labels, data.test
            )
            if version is versions[-1]:
                original_base_accuracy = test_accuracy(model_dir, out_dir, labels, data.test)
        else:
            accuracy = test_accuracy(model_dir, out_dir, labels, data.test)
        accuracies.append(accuracy)
        info = rounds.get(version.version_id)
        metrics = dict(info.metrics) if info is not None else {}
        upload = _manifest_bytes(version)
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
    out: dict[str, Any] = {
        "experiment_id": experiment_id,
        "strategy": finetune.strategy.model_dump(),
        "rounds": rows,
        "final_test_accuracy": accuracies[-1] if accuracies else None,
        "best_test_accuracy": max(accuracies, default=None),
        "upload_bytes_per_site_per_round": _manifest_bytes(versions[-1]) if versions else 0,
        "seconds": time.monotonic() - started,
        "training_seconds": train_seconds,
    }
    if global_report is not None:
        global_report["final_test_accuracy_on_original_base"] = original_base_accuracy
        out["global_stage"] = global_report
    return out
