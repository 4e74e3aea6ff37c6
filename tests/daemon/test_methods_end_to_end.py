"""End to end with real processes, one PEFT method each: prompt tuning, IA3 and prefix tuning.

Each run is a user's run: `fedtune coordinator serve`, two `fedtune worker run`, `fedtune admin`, a
one-round experiment with another strategy than the LoRA tests use (so the sites' client-side terms and
the server optimisers run against real training code), then `models export` and peft's own loader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.daemon.cluster import E2E_LABELS, E2E_SITES, Cluster
from tests.fixtures.tiny import make_text_data, make_tiny_model, tiny_spec

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class MethodCase:
    peft: dict[str, Any]
    strategy: dict[str, Any]
    tensor_marker: str  # every tensor a site sends names this (besides a classifier head)
    peft_type: str
    causal_lm: bool = False


CASES = {
    "prompt_tuning+fedyogi": MethodCase(
        {"method": "prompt_tuning", "num_virtual_tokens": 4},
        {"name": "fedyogi", "options": {"eta": 0.05}},
        "prompt_embeddings",
        "PROMPT_TUNING",
    ),
    "ia3+fedprox": MethodCase(
        {"method": "ia3"}, {"name": "fedprox", "options": {"mu": 0.01}}, "ia3_l", "IA3"
    ),
    "prefix_tuning+fedavgm": MethodCase(
        {"method": "prefix_tuning", "num_virtual_tokens": 4},
        {"name": "fedavgm", "options": {"momentum": 0.5}},
        "prompt_embeddings",
        "PREFIX_TUNING",
        causal_lm=True,
    ),
}


def _submit(cluster: Cluster, tmp_path: Path, case: MethodCase) -> str:
    overrides: dict[str, Any] = {}
    if case.causal_lm:
        overrides = {"task": "causal-lm", "labels": None, "base_model": {"name": "tiny-llama"}}
    spec = tiny_spec(
        peft=case.peft,
        training={"batch_size": 8, "learning_rate": 1e-2, "max_length": 32, "seed": 0, "max_steps": 4},
        stages=[{"kind": "finetune", "rounds": 1, "strategy": case.strategy, "selection": {"min_sites": 2}}],
        **overrides,
    )
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(json.loads(spec.to_json()), sort_keys=False))
    return str(cluster.admin("experiment", "submit", str(spec_path), "--start")["experiment_id"])


@pytest.mark.parametrize("case_name", sorted(CASES))
def test_method_trains_a_federated_round_and_its_export_loads_in_peft(
    case_name: str, cluster: Cluster, tmp_path: Path, model_root: Path, data_roots: dict[str, Path]
) -> None:
    # Prepare
    case = CASES[case_name]
    if case.causal_lm:
        make_tiny_model(model_root, "tiny-llama", "llama")
        for seed, site in enumerate(E2E_SITES):
            make_text_data(data_roots[site], n_train=48, n_eval=16, seed=seed)
    cluster.start_coordinator()
    for site in E2E_SITES:
        cluster.add_site(site)
        cluster.start_worker(site, data_roots[site], model_root)
    cluster.wait_workers_online(E2E_SITES)

    # Execute
    experiment_id = _submit(cluster, tmp_path, case)
    shown = cluster.wait_experiment(experiment_id, timeout=240)

    # Assert: one committed round of both sites, reporting the task's eval metric
    assert shown["state"] == "completed", shown
    (round_info,) = cluster.admin("rounds", experiment_id)["rounds"]
    assert round_info["state"] == "committed" and round_info["updates_received"] == 2
    assert "eval_loss" in round_info["metrics"]
    models = cluster.admin("models", "list", "--experiment", experiment_id)["models"]
    version = next(m for m in models if m["version"] == 1)
    export_dir = tmp_path / "export"
    cluster.admin("models", "export", version["version_id"], "--out", str(export_dir))

    # Assert: the export holds only the method's tensors (and a classifier head), and peft loads it
    from peft import PeftModel
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    exported = load_file(str(export_dir / "adapter_model.safetensors"))
    assert exported and all(case.tensor_marker in n or "classifier" in n for n in exported), list(exported)
    assert json.loads((export_dir / "adapter_config.json").read_text())["peft_type"] == case.peft_type
    if case.causal_lm:
        base = AutoModelForCausalLM.from_pretrained(str(model_root / "tiny-llama"))
    else:
        base = AutoModelForSequenceClassification.from_pretrained(
            str(model_root / "tiny-bert"), num_labels=len(E2E_LABELS)
        )
    model = PeftModel.from_pretrained(base, str(export_dir))
    assert model.peft_config["default"].peft_type.value == case.peft_type
