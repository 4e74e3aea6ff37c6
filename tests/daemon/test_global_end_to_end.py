"""End to end with real processes: a global stage (masked-LM LoRA on the sites' text), then finetune.

Lineage reads base -> global versions -> finetune versions; every finetune version carries
`base_version.json` naming the global version whose LoRA the sites merged into their base.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.daemon.cluster import E2E_LABELS, E2E_SITES, Cluster
from tests.fixtures.tiny import make_classification_data, make_tiny_model, tiny_spec

pytestmark = pytest.mark.slow


def test_global_then_finetune_completes_with_lineage_and_a_loadable_export(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Prepare
    model_root = tmp_path / "models"
    make_tiny_model(model_root, "tiny-bert", "bert")
    cluster.start_coordinator()
    for seed, site in enumerate(E2E_SITES):
        make_classification_data(tmp_path / "data" / site, E2E_LABELS, n_train=48, n_eval=16, seed=seed)
        cluster.add_site(site)
        cluster.start_worker(site, tmp_path / "data" / site, model_root)
    cluster.wait_workers_online(E2E_SITES)
    spec = tiny_spec(
        training={"batch_size": 8, "learning_rate": 5e-3, "max_length": 32, "seed": 0, "max_steps": 4},
        stages=[
            {"kind": "global", "rounds": 1, "selection": {"min_sites": 2}},
            {"kind": "finetune", "rounds": 1, "selection": {"min_sites": 2}},
        ],
    )
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(json.loads(spec.to_json()), sort_keys=False))

    # Execute
    experiment_id = str(cluster.admin("experiment", "submit", str(spec_path), "--start")["experiment_id"])
    shown = cluster.wait_experiment(experiment_id, timeout=300)

    # Assert: lineage base -> global v0, v1 -> finetune v2 (its INIT), v3
    assert shown["state"] == "completed", shown
    rounds = cluster.admin("rounds", experiment_id)["rounds"]
    assert [(r["stage"], r["state"]) for r in rounds] == [("global", "committed"), ("finetune", "committed")]
    assert "eval_mlm_loss" in rounds[0]["metrics"] and "base_eval_mlm_loss" in rounds[0]["metrics"]
    models = sorted(
        cluster.admin("models", "list", "--experiment", experiment_id)["models"], key=lambda m: m["version"]
    )
    assert [m["version"] for m in models] == [0, 1, 2, 3]
    shown_versions = [cluster.admin("models", "show", m["version_id"]) for m in models]
    parents = [v.get("parent_id", "") for v in shown_versions]
    ids = [m["version_id"] for m in models]
    assert parents == ["", ids[0], ids[1], ids[2]]
    assert [v["stage"] for v in shown_versions] == ["global", "global", "finetune", "finetune"]

    # Assert: the export names its base version and loads with peft on the ORIGINAL base. It loads, but
    # faithful inference needs the merged base (the site's base + version 1's LoRA, merge_and_unload).
    export_dir = tmp_path / "export"
    cluster.admin("models", "export", ids[3], "--out", str(export_dir))
    assert json.loads((export_dir / "base_version.json").read_text())["base_version_id"] == ids[1]

    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(str(model_root / "tiny-bert"), num_labels=2)
    model = PeftModel.from_pretrained(base, str(export_dir))
    assert any("lora_B" in name for name, _ in model.named_parameters())
