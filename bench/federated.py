"""Federated configurations on one local cluster: a real coordinator and one worker process per site.

The cluster is started like `demo.run` starts it (same ProcessGroup, free_port, AdminClient
and waits); each configuration is one experiment, run to completion, after which every round's
global version is exported and scored on the held-out test set (`demo.evaluate`).
Scoring (`bench.scoring`, shared with `fedtune bench report`) uses the Admin API only, per-site
figures included. A run with a `global` stage first also reports that stage's held-out LM loss on the
sites' text (`bench.global_eval`), which only the benchmark can: it holds every site's data.
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

from admin.client import AdminClient
from bench import global_eval
from bench.config import spec_yaml
from bench.dataset import BenchData
from bench.scoring import score_finetune_versions, site_figures
from demo.processes import ProcessGroup, free_port
from demo.progress import follow_experiment, wait_for_coordinator
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.spec import ExperimentSpec

_REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Cluster:
    admin: AdminClient
    group: ProcessGroup
    model_root: Path


def _child_env(**extra: str) -> dict[str, str]:
    # The source tree first, as tests/daemon/cluster.py does: an old editable install may map
    # coordinator/ and worker/ as namespace packages.
    path = os.pathsep.join(filter(None, [str(_REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    return {"PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false", **extra}


@contextmanager
def local_cluster(work: Path, data: BenchData, model_root: Path) -> Iterator[Cluster]:
    """Coordinator (SQLite + local blobs) and one worker per site on 127.0.0.1; stopped on exit."""
    with site_cluster(work, [site.name for site in data.sites], data.sites_root, model_root) as cluster:
        yield cluster


@contextmanager
def site_cluster(work: Path, sites: list[str], sites_root: Path, model_root: Path) -> Iterator[Cluster]:
    """`local_cluster` for any sites: worker `site` reads `<sites_root>/<site>` (its --data-root)."""
    port = free_port()
    target = f"127.0.0.1:{port}"
    threads = str(max(1, (os.cpu_count() or 2) // len(sites)))
    coordinator_dir = work / "coordinator"
    with ProcessGroup(work / "logs") as group, AdminClient(target, timeout=30) as admin:
        group.start(
            "coordinator",
            ["coordinator", "serve", "--port", str(port), "--data-dir", str(coordinator_dir)],
            env=_child_env(),
        )
        wait_for_coordinator(admin, group)
        for site in sites:
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
                    str(sites_root / site),
                    "--model-root",
                    str(model_root),
                    "--device",
                    "cpu",
                ],
                env=_child_env(FEDTUNE_TORCH_THREADS=threads),
            )
        yield Cluster(admin, group, model_root)


def _global_stage_report(
    cluster: Cluster,
    spec: ExperimentSpec,
    data: BenchData,
    experiment_id: str,
    global_files: dict[str, Path],
) -> dict[str, Any] | None:
    """The global stage's held-out LM loss per round (the bench holds every site's text), or None."""
    global_index = next((i for i, s in enumerate(spec.stages) if s.kind == "global"), None)
    if global_index is None:
        return None
    name = spec.stages[global_index].stage_name
    versions = {v.version_id: v for v in cluster.admin.list_models(experiment_id) if v.stage == name}
    aggregated: dict[int, dict[str, Any]] = {}
    sites = [s.name for s in data.sites]
    for version_id, adapter_file in global_files.items():
        version = versions[version_id]
        loss = global_eval.global_lm_loss(spec, cluster.model_root, adapter_file, data.sites_root, sites)
        aggregated[int(version.round)] = loss
        print(
            f"  v{version.version} (global round {version.round}): held-out LM loss {loss['mean']}",
            file=sys.stderr,
        )
    round_infos = cluster.admin.list_rounds(experiment_id)
    infos = [r for r in round_infos if r.stage_index == global_index]
    site_rows = {r: v for (i, r), v in site_figures(round_infos).items() if i == global_index}
    report = global_eval.global_rounds_report(infos, aggregated, site_rows)
    report.update(stage=name, stage_index=global_index, rounds_total=spec.stages[global_index].rounds)
    return report


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
    scored = score_finetune_versions(
        cluster.admin, experiment_id, spec, cluster.model_root, data.test, export_root
    )
    global_report = _global_stage_report(cluster, spec, data, experiment_id, scored["global_files"])
    finetune = spec.stages[max(i for i, s in enumerate(spec.stages) if s.kind == "finetune")]
    out: dict[str, Any] = {
        "experiment_id": experiment_id,
        "strategy": finetune.strategy.model_dump(),
        "rounds": scored["rounds"],
        "final_test_accuracy": scored["final_test_accuracy"],
        "best_test_accuracy": scored["best_test_accuracy"],
        "upload_bytes_per_site_per_round": scored["upload_bytes_per_site_per_round"],
        "seconds": time.monotonic() - started,
        "training_seconds": train_seconds,
    }
    if global_report is not None:
        global_report["final_test_accuracy_on_original_base"] = scored["final_test_accuracy_on_original_base"]
        out["global_stage"] = global_report
    return out
