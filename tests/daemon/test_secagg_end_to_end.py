"""Secure aggregation end to end with real processes: `fedtune coordinator serve`, three `fedtune worker
run` training a tiny BERT with LoRA, one round with privacy.secure_aggregation. The workers advertise,
deal, train, send masked updates and reveal shares through the real daemon code (worker/secagg.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.daemon.cluster import E2E_LABELS, Cluster
from tests.fixtures.tiny import make_classification_data, tiny_spec

pytestmark = pytest.mark.slow
SITES = ["site-a", "site-b", "site-c"]


def test_three_real_workers_run_a_secure_round(cluster: Cluster, tmp_path: Path, model_root: Path) -> None:
    # Prepare
    cluster.start_coordinator()
    for seed, site in enumerate(SITES):
        root = tmp_path / "secagg-data" / site
        make_classification_data(root, E2E_LABELS, n_train=32, n_eval=8, seed=seed)
        cluster.add_site(site)
        cluster.start_worker(site, root, model_root)
    cluster.wait_workers_online(SITES)
    spec = tiny_spec(
        training={"batch_size": 8, "learning_rate": 1e-2, "max_length": 32, "seed": 0, "max_steps": 2},
        stages=[{"kind": "finetune", "rounds": 1, "selection": {"min_sites": 3}}],
        privacy={"secure_aggregation": True, "secagg": {"clip_range": 4.0, "max_weight": 64}},
    )
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(json.loads(spec.to_json()), sort_keys=False))

    # Execute
    experiment_id = str(cluster.admin("experiment", "submit", str(spec_path), "--start")["experiment_id"])
    shown = cluster.wait_experiment(experiment_id, timeout=300)

    # Assert: the round committed with the three masked updates; each worker answered every step
    assert shown["state"] == "completed", shown
    (round_info,) = cluster.admin("rounds", experiment_id)["rounds"]
    assert round_info["state"] == "committed" and round_info["updates_received"] == 3
    assert round_info["metrics"]["strategy.secagg_sites"] == 3.0
    for site in SITES:
        log = cluster.log_text(f"worker-{site}")
        for step in ("secagg_advertise", "secagg_share", "secagg_unmask"):
            assert f"secure aggregation {step} answered" in log, (site, step)
