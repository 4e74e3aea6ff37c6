"""End to end with compressed uploads: two real workers train a tiny BERT LoRA for two rounds and send
top-k 25 % int8 deltas with error feedback; the coordinator decodes them and the experiment completes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fedtune.tensorstream.safetensors_file import read_arrays
from tests.daemon.cluster import E2E_SITES, Cluster
from tests.fixtures.tiny import tiny_spec

pytestmark = pytest.mark.slow


def test_two_workers_send_topk_int8_updates_with_error_feedback(
    cluster: Cluster, tmp_path: Path, model_root: Path, data_roots: dict[str, Path]
) -> None:
    # Prepare
    cluster.start_coordinator()
    for site in E2E_SITES:
        cluster.add_site(site)
        cluster.start_worker(site, data_roots[site], model_root)
    cluster.wait_workers_online(E2E_SITES)
    spec = tiny_spec(
        training={"max_steps": 8, "batch_size": 8, "learning_rate": 5e-3, "max_length": 32, "seed": 0},
        transport={"update_encoding": "int8", "int8_block_size": 64, "topk_fraction": 0.25},
    )
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(json.loads(spec.to_json()), sort_keys=False))

    # Execute
    experiment_id = str(cluster.admin("experiment", "submit", str(spec_path), "--start")["experiment_id"])
    shown = cluster.wait_experiment(experiment_id, timeout=240)

    # Assert: completed; each update is a fraction of the fp32 tensors; each site kept its residual
    assert shown["state"] == "completed", shown
    rounds = cluster.admin("rounds", experiment_id)["rounds"]
    fp32_sizes = set()
    for rnd in rounds:
        assert rnd["state"] == "committed"
        assert len(rnd["site_updates"]) == len(E2E_SITES)
        for update in rnd["site_updates"]:
            ratio = update["metrics"]["compression_ratio"]  # fp32 bytes / bytes sent, as the site counted
            assert ratio > 2.8, update
            fp32_sizes.add(round(int(update["received_bytes"]) * ratio))
    assert len(fp32_sizes) == 1  # the coordinator received exactly what each site encoded
    for site in E2E_SITES:
        (residual_file,) = (data_roots[site] / ".fedtune" / "residuals").iterdir()
        residual = read_arrays(residual_file)
        assert residual and any(float(abs(a).max()) > 0 for a in residual.values())
