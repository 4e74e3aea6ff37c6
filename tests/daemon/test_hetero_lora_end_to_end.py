"""End to end with real processes: two sites train different LoRA ranks (docs/decisions.md 37).

`fedtune coordinator serve`, two `fedtune worker run` on a tiny BERT: site-a trains rank 2 because the
spec says so (`peft.site_ranks`), site-b rank 3 because its worker says so (`--max-lora-rank 3`); the
global adapter has rank 4 and the coordinator aggregates with `hetero_lora` (its default method, stack).
The export loads in peft.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.daemon.cluster import E2E_SITES, Cluster
from tests.fixtures.tiny import tiny_spec

pytestmark = pytest.mark.slow


def test_two_sites_of_different_ranks_train_one_rank_4_adapter(
    cluster: Cluster, tmp_path: Path, model_root: Path, data_roots: dict[str, Path]
) -> None:
    # Prepare
    spec = tiny_spec(
        peft={"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "site_ranks": {"site-a": 2}},
        training={"max_steps": 4, "batch_size": 8, "learning_rate": 2e-2, "max_length": 32},
        stages=[
            {
                "kind": "finetune",
                "rounds": 2,
                "selection": {"min_sites": 2},
                "strategy": {"name": "hetero_lora"},  # method stack; svd gives the same adapter (unit tests)
            }
        ],
    )
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(json.loads(spec.to_json()), sort_keys=False))
    cluster.start_coordinator()
    for site in E2E_SITES:
        cluster.add_site(site)
    cluster.start_worker("site-a", data_roots["site-a"], model_root)
    cluster.start_worker("site-b", data_roots["site-b"], model_root, "--max-lora-rank", "3")
    cluster.wait_workers_online(E2E_SITES)

    # Execute
    experiment_id = str(cluster.admin("experiment", "submit", str(spec_path), "--start")["experiment_id"])
    shown = cluster.wait_experiment(experiment_id, timeout=240)

    # Assert: both rounds committed with both sites, each at its own rank
    assert shown["state"] == "completed", shown
    rounds = cluster.admin("rounds", experiment_id)["rounds"]
    assert [r["state"] for r in rounds] == ["committed", "committed"]
    assert all(r["updates_received"] == 2 for r in rounds)
    assert "trains LoRA rank 2 of the global rank 4" in cluster.log_text("worker-site-a")
    assert "trains LoRA rank 3 of the global rank 4" in cluster.log_text("worker-site-b")
    models = cluster.admin("models", "list", "--experiment", experiment_id)["models"]
    final = next(m for m in models if m["version"] == 2)
    assert final["metrics"]["strategy.lora_pairs"] > 0
    assert 0 < final["metrics"]["strategy.truncation_error_max"] < 1  # 2 + 3 components cut to 4
    export_dir = tmp_path / "export"
    cluster.admin("models", "export", final["version_id"], "--out", str(export_dir))

    # Assert: a rank-4 adapter peft loads, re-factorised by the coordinator (A's rows orthogonal)
    from peft import PeftModel
    from safetensors.numpy import load_file
    from transformers import AutoModelForSequenceClassification

    exported = load_file(str(export_dir / "adapter_model.safetensors"))
    a_names = [n for n in exported if ".lora_A." in n]
    assert a_names
    for name in a_names:
        a = exported[name].astype(np.float64)
        assert a.shape[0] == 4
        gram = a @ a.T  # rows orthogonal, none shorter than a fresh LoRA's (1/sqrt(3))
        np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-4)
        assert np.diag(gram).min() > 1 / 3 - 1e-4
    base = AutoModelForSequenceClassification.from_pretrained(str(model_root / "tiny-bert"), num_labels=2)
    model = PeftModel.from_pretrained(base, str(export_dir))
    assert getattr(model.peft_config["default"], "r", None) == 4
