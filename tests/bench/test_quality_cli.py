"""`fedtune bench quality --quick` end to end on a tiny model and a tiny generated corpus."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon.cluster import clean_env
from tests.fixtures.tiny import CUE_WORDS, FILLER_WORDS, make_tiny_model

LABELS = ["business", "politics", "sport", "tech"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_tiny_corpus(root: Path, per_class: int = 24, seed: int = 0) -> Path:
    """One folder per class of .txt articles whose words carry the class's cue words."""
    rng = random.Random(seed)
    for label_id, label in enumerate(LABELS):
        folder = root / label
        folder.mkdir(parents=True)
        for i in range(per_class):
            words = rng.choices(FILLER_WORDS, k=6) + rng.choices(CUE_WORDS[label_id], k=3)
            rng.shuffle(words)
            (folder / f"{i:03d}.txt").write_text(" ".join(words[:3]) + "\n\n" + " ".join(words[3:]) + "\n")
    return root


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_quality_benchmark_writes_json_table_and_plot(tmp_path: Path) -> None:
    # Prepare
    model_dir = make_tiny_model(tmp_path / "models")
    corpus = make_tiny_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "fedtune",
        "bench",
        "quality",
        "--quick",
        "--sites",
        "2",
        "--alpha",
        "1.0",
        "--rounds",
        "2",
        "--local-steps",
        "2",
        "--batch-size",
        "8",
        "--max-length",
        "32",
        "--configs",
        "centralized,local-only,fedavg",
        "--methods",
        "lora",
        "--model-dir",
        str(model_dir),
        "--corpus-dir",
        str(corpus),
        "--out",
        str(out),
    ]

    # Execute
    result = subprocess.run(args, capture_output=True, text=True, env=clean_env(), cwd=tmp_path, timeout=220)

    # Assert
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    results = json.loads((out / "quality.json").read_text())
    assert results["config"]["sites"] == 2 and results["config"]["configs"] == [
        "centralized",
        "local-only",
        "fedavg",
    ]
    assert results["budget"] == {
        "federated_examples_seen": 2 * 2 * 2 * 8,
        "centralized_steps": 8,
        "local_only_steps_per_site": 4,
        "batch_size": 8,
    }
    assert results["machine"]["cpu_count"] >= 1 and results["machine"]["versions"]["torch"]
    lora = results["methods"]["lora"]
    assert 0 < lora["parameters"]["uploaded_parameters"] < lora["parameters"]["base_model_parameters"]
    central = lora["baselines"]["centralized"]
    assert 0 <= central["test_accuracy"] <= 1 and central["train_steps"] == 8
    local = lora["baselines"]["local-only"]
    assert set(local["sites"]) == {"site-a", "site-b"}
    assert local["test_accuracy_min"] <= local["test_accuracy_mean"] <= local["test_accuracy_max"]
    run = lora["federated"]["fedavg"]
    assert [r["round"] for r in run["rounds"]] == [0, 1, 2]
    for row in run["rounds"]:
        assert 0 <= row["test_accuracy"] <= 1
    for row in run["rounds"][1:]:
        assert set(row["site_metrics"]) == {"site-a", "site-b"}
        assert all(0 <= m["eval_accuracy"] <= 1 for m in row["site_metrics"].values())
        assert row["upload_bytes_per_site"] == 4 * lora["parameters"]["uploaded_parameters"]
        assert row["upload_bytes_total"] == 2 * row["upload_bytes_per_site"]
    table = (out / "quality.md").read_text()
    assert (
        "| lora | fedavg |" in table
        and "| lora | centralized |" in table
        and "| lora | local-only |" in table
    )
    assert (out / "quality.png").read_bytes()[:8] == PNG_MAGIC
    assert not (out / "work").exists()


@pytest.fixture(scope="module")
def staged_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `--quick` run of two staged configurations (2 sites): a global round then a finetune round, and
    the fedncm head round then a finetune round. Returns its --out folder."""
    tmp_path = tmp_path_factory.mktemp("staged")
    model_dir = make_tiny_model(tmp_path / "models")
    corpus = make_tiny_corpus(tmp_path / "corpus", per_class=12)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "fedtune", "bench", "quality", "--quick", "--sites", "2", "--alpha", "1.0"]
    args += ["--rounds", "1", "--local-steps", "2", "--batch-size", "8", "--max-length", "32"]
    args += ["--configs", "global1+fedavg,ncm+fedavg", "--methods", "lora", "--model-dir", str(model_dir)]
    args += ["--corpus-dir", str(corpus), "--out", str(out)]
    result = subprocess.run(args, capture_output=True, text=True, env=clean_env(), cwd=tmp_path, timeout=320)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return out


@pytest.mark.slow
@pytest.mark.timeout(340)  # the shared run: ~35 s alone on 2 cores, several times that on shared cores
def test_global_stage_config_reports_finite_lm_losses_and_merged_base_accuracy(staged_run: Path) -> None:
    out = staged_run
    run = json.loads((out / "quality.json").read_text())["methods"]["lora"]["federated"]["global1+fedavg"]
    stage = run["global_stage"]
    assert stage["loss_key"] == "eval_mlm_loss" and [r["round"] for r in stage["rounds"]] == [1]
    row = stage["rounds"][0]
    for value in (stage["base_loss"], stage["base_loss_aggregated_eval"], row["eval_mlm_loss"]):
        assert math.isfinite(value) and value > 0
    assert math.isfinite(row["aggregated_eval_mlm_loss"]) and isinstance(row["decreased_vs_base"], bool)
    assert set(row["site_metrics"]) == {"site-a", "site-b"}
    assert [r["round"] for r in run["rounds"]] == [0, 1]
    assert all(r["test_accuracy_base"] == "merged" and 0 <= r["test_accuracy"] <= 1 for r in run["rounds"])
    assert 0 <= stage["final_test_accuracy_on_original_base"] <= 1
    table = (out / "quality.md").read_text()
    assert "global stage: held-out eval_mlm_loss base -> after round r" in table
    assert (out / "quality.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
@pytest.mark.timeout(340)
def test_ncm_config_reports_the_head_round_before_the_finetune_rounds(staged_run: Path) -> None:
    out = staged_run
    run = json.loads((out / "quality.json").read_text())["methods"]["lora"]["federated"]["ncm+fedavg"]
    assert [(r["round"], r["stage"], r["stage_round"]) for r in run["rounds"]] == [
        (0, "head", 0),
        (1, "head", 1),
        (2, "finetune", 1),
    ]
    assert set(run["rounds"][1]["site_metrics"]) == {"site-a", "site-b"}
    assert all(0 <= r["test_accuracy"] <= 1 for r in run["rounds"])
    table = (out / "quality.md").read_text()
    assert "| lora | ncm+fedavg |" in table and "| 1 | head 1 |" in table and "| 2 | finetune 1 |" in table
