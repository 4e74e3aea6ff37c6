"""Federated configurations on one local cluster: a real coordinator and one worker process per site.

The cluster is started like `fedtune.demo.run` starts it (same ProcessGroup, free_port, AdminClient
and waits); each configuration is one experiment, run to completion, after which every round's
global version is exported and scored on the held-out test set (`fedtune.demo.evaluate`).
Per-site figures (eval accuracy, bytes received) come from the coordinator's registry: the admin
API reports only the round's example-weighted means.
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


def _site_updates(database_url: str, experiment_id: str) -> dict[int, dict[str, dict[str, float]]]:
    """round -> site -> {eval_accuracy, train_loss, ..., received_bytes} of each accepted update."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from storage.db import make_engine
    from storage.models import Round, Site, Update

    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            rows = session.execute(
                select(Round.round, Site.name, Update.metrics, Update.received_bytes, Update.num_examples)
                .join(Round, Update.round_id == Round.id)
                .join(Site, Update.site_id == Site.id)
                .where(Round.experiment_id == experiment_id, Update.state.not_in(["receiving", "rejected"]))
            ).all()
    finally:
        engine.dispose()
    out: dict[int, dict[str, dict[str, float]]] = {}
    for round_no, site, metrics, received, examples in rows:
        figures = {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
        figures.update(received_bytes=float(received), num_examples=float(examples))
        out.setdefault(int(round_no), {})[site] = figures
    return out


def run_federated(
    cluster: Cluster, spec: ExperimentSpec, data: BenchData, export_root: Path, timeout: float
) -> dict[str, Any]:
    """Run one experiment to completion; per round: test accuracy, mean and per-site metrics, bytes."""
    started = time.monotonic()
    experiment = cluster.admin.submit_experiment(spec_yaml(spec), start=True)
    experiment_id = experiment.experiment_id
    state = follow_experiment(cluster.admin, cluster.group, experiment_id, timeout)
    if state != "completed":
        error = cluster.admin.get_experiment(experiment_id).error
        raise FedtuneError(ErrorCode.WRONG_STATE, f"experiment {spec.name} ended {state}: {error}")
    train_seconds = time.monotonic() - started
    versions = sorted(cluster.admin.list_models(experiment_id), key=lambda v: v.version)
    rounds = {r.model_version_id: r for r in cluster.admin.list_rounds(experiment_id)}
    per_site = _site_updates(cluster.database_url, experiment_id)
    model_dir = cluster.model_root / spec.base_model.name
    labels = spec.labels or []
    rows: list[dict[str, Any]] = []
    accuracies: list[float] = []
    for version in versions:
        out_dir = export_root / f"v{version.version}"
        cluster.admin.export_model(version.version_id, out_dir)
        accuracy = test_accuracy(model_dir, out_dir, labels, data.test)
        accuracies.append(accuracy)
        info = rounds.get(version.version_id)
        metrics = dict(info.metrics) if info is not None else {}
        upload = _manifest_bytes(version)
        rows.append(
            {
                "version": int(version.version),
                "round": int(version.round),
                "test_accuracy": accuracy,
                "sites": sorted(version.sites),
                "mean_train_loss": metrics.get("train_loss"),
                "mean_site_eval_accuracy": metrics.get("eval_accuracy"),
                "site_metrics": per_site.get(int(version.round), {}) if version.round > 0 else {},
                "upload_bytes_per_site": upload if version.round > 0 else 0,
                "upload_bytes_total": upload * len(version.sites) if version.round > 0 else 0,
            }
        )
        print(f"  v{version.version} (round {version.round}): test accuracy {accuracy:.4f}", file=sys.stderr)
    return {
        "experiment_id": experiment_id,
        "strategy": spec.stages[0].strategy.model_dump(),
        "rounds": rows,
        "final_test_accuracy": accuracies[-1] if accuracies else None,
        "best_test_accuracy": max(accuracies, default=None),
        "upload_bytes_per_site_per_round": _manifest_bytes(versions[-1]) if versions else 0,
        "seconds": time.monotonic() - started,
        "training_seconds": train_seconds,
    }
