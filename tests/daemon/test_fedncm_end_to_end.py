"""End to end with real processes: a fedncm head round over one-class sites, then a fedavg round.

Each site holds a single class (the worst label skew): the head round must still produce the
nearest-class-mean head of the pooled data, computed here independently from the sites' text.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.daemon.cluster import E2E_LABELS, E2E_SITES, Cluster
from tests.fixtures.tiny import make_classification_data, tiny_spec

pytestmark = pytest.mark.slow


def _one_class_sites(tmp_path: Path) -> dict[str, Path]:
    roots = {}
    for index, site in enumerate(E2E_SITES):
        roots[site] = tmp_path / "skewed" / site
        skew = [1.0 if i == index else 0.0 for i in range(len(E2E_LABELS))]
        make_classification_data(roots[site], E2E_LABELS, n_train=40, n_eval=16, seed=index, label_skew=skew)
    return roots


def _pooled_class_means(model_root: Path, roots: dict[str, Path]) -> np.ndarray:
    """The classifier input (BERT's pooler output) averaged per class over every site's train split."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = str(model_root / "tiny-bert")
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(E2E_LABELS)).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = [
        json.loads(line)
        for root in roots.values()
        for line in (root / "train.jsonl").read_text().splitlines()
    ]
    means = []
    for label in E2E_LABELS:
        batch = tokenizer(
            [r["text"] for r in rows if r["label"] == label],
            truncation=True,
            max_length=32,
            padding=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            means.append(model.bert(**batch).pooler_output.mean(0).numpy())
    return np.stack(means)


def test_head_round_gives_the_pooled_class_mean_head_then_finetune_continues(
    cluster: Cluster, tmp_path: Path, model_root: Path
) -> None:
    # Prepare
    roots = _one_class_sites(tmp_path)
    cluster.start_coordinator()
    for site in E2E_SITES:
        cluster.add_site(site)
        cluster.start_worker(site, roots[site], model_root)
    cluster.wait_workers_online(E2E_SITES)
    spec = tiny_spec(
        training={"batch_size": 8, "learning_rate": 5e-3, "max_length": 32, "seed": 0, "max_steps": 3},
        stages=[
            {
                "name": "head",
                "kind": "finetune",
                "strategy": {"name": "fedncm"},
                "selection": {"min_sites": 2},
            },
            {"kind": "finetune", "rounds": 1, "selection": {"min_sites": 2}},
        ],
    )
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(json.loads(spec.to_json()), sort_keys=False))

    # Execute
    experiment_id = str(cluster.admin("experiment", "submit", str(spec_path), "--start")["experiment_id"])
    shown = cluster.wait_experiment(experiment_id, timeout=240)

    # Assert: two committed rounds, the head round's version is the pooled NCM head
    assert shown["state"] == "completed", shown
    rounds = cluster.admin("rounds", experiment_id)["rounds"]
    assert [(r["stage"], r["state"]) for r in rounds] == [("head", "committed"), ("finetune", "committed")]
    head_metrics = rounds[0]["metrics"]
    assert head_metrics["strategy.head_classes_present"] == 2 and head_metrics["strategy.head_examples"] == 80
    models = cluster.admin("models", "list", "--experiment", experiment_id)["models"]
    assert sorted((m["stage"], m["version"]) for m in models) == [("finetune", 2), ("head", 0), ("head", 1)]
    head_version = next(m for m in models if m["version"] == 1)
    export_dir = tmp_path / "export"
    cluster.admin("models", "export", head_version["version_id"], "--out", str(export_dir))
    from safetensors.numpy import load_file

    exported = load_file(str(export_dir / "adapter_model.safetensors"))
    weight = next(v for k, v in exported.items() if k.endswith("classifier.weight"))
    bias = next(v for k, v in exported.items() if k.endswith("classifier.bias"))
    means = _pooled_class_means(model_root, roots)
    scale = head_metrics["strategy.head_logit_scale"]
    np.testing.assert_allclose(weight, scale * means, rtol=1e-3, atol=1e-4 * scale)
    np.testing.assert_allclose(bias, -0.5 * scale * (means**2).sum(1), rtol=1e-3)
