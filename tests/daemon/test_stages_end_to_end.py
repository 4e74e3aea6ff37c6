"""End to end with real processes: an FFA-LoRA finetune stage, then a personalize stage.

The personalize round gives every site a PERSONALIZE task from the finetuned adapter; the sites keep
their personalized adapters and report global vs personal metrics, which land in the round's metrics.
The exported FFA-LoRA version carries the frozen lora_A tensors and loads in peft.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.daemon.cluster import E2E_LABELS, E2E_SITES, Cluster
from tests.fixtures.tiny import tiny_spec

pytestmark = pytest.mark.slow


def _submit(cluster: Cluster, tmp_path: Path) -> str:
    spec = tiny_spec(
        peft={"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "freeze_a": True},
        training={"batch_size": 8, "learning_rate": 5e-3, "max_length": 32, "seed": 0, "max_steps": 4},
        stages=[
            {"kind": "finetune", "rounds": 1, "selection": {"min_sites": 2}},
            {"kind": "personalize", "selection": {"min_sites": 2}},
        ],
    )
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(json.loads(spec.to_json()), sort_keys=False))
    return str(cluster.admin("experiment", "submit", str(spec_path), "--start")["experiment_id"])


def test_finetune_then_personalize_reports_per_site_metrics_and_ffa_export_loads(
    cluster: Cluster, tmp_path: Path, model_root: Path, data_roots: dict[str, Path]
) -> None:
    # Prepare
    cluster.start_coordinator()
    for site in E2E_SITES:
        cluster.add_site(site)
        cluster.start_worker(site, data_roots[site], model_root)
    cluster.wait_workers_online(E2E_SITES)

    # Execute
    experiment_id = _submit(cluster, tmp_path)
    shown = cluster.wait_experiment(experiment_id, timeout=240)

    # Assert: finetune round made version 1; the personalize round made no version but per-site metrics
    assert shown["state"] == "completed", shown
    rounds = cluster.admin("rounds", experiment_id)["rounds"]
    assert [(r["stage"], r["state"]) for r in rounds] == [
        ("finetune", "committed"),
        ("personalize", "committed"),
    ]
    metrics = rounds[1]["metrics"]
    for site in E2E_SITES:
        assert 0.0 <= metrics[f"{site}.personal_eval_accuracy"] <= 1.0
        assert f"{site}.global_eval_accuracy" in metrics
    assert "personal_gain_accuracy" in metrics and rounds[1]["model_version_id"] == ""
    assert rounds[1]["updates_received"] == 2 and rounds[1]["tasks_total"] == 2
    models = cluster.admin("models", "list", "--experiment", experiment_id)["models"]
    assert sorted(m["version"] for m in models) == [0, 1]
    for site in E2E_SITES:
        kept = data_roots[site] / ".fedtune" / "personalized" / experiment_id
        assert (kept / "adapter_config.json").is_file()
    for site in E2E_SITES:
        assert "personalized model kept at" in cluster.log_text(f"worker-{site}")

    # Assert: the FFA-LoRA export is a complete adapter (frozen lora_A merged in) that peft loads
    version = next(m for m in models if m["version"] == 1)
    export_dir = tmp_path / "export"
    cluster.admin("models", "export", version["version_id"], "--out", str(export_dir))
    assert not (export_dir / "frozen_adapter.safetensors").exists()

    from peft import PeftModel
    from safetensors.numpy import load_file
    from transformers import AutoModelForSequenceClassification

    exported = load_file(str(export_dir / "adapter_model.safetensors"))
    assert any("lora_A" in name for name in exported) and any("lora_B" in name for name in exported)
    base = AutoModelForSequenceClassification.from_pretrained(
        str(model_root / "tiny-bert"), num_labels=len(E2E_LABELS)
    )
    model = PeftModel.from_pretrained(base, str(export_dir))
    loaded = {n: p for n, p in model.named_parameters() if "lora_A" in n}
    assert loaded and all(float(p.abs().sum()) > 0 for p in loaded.values())
