"""End to end with real processes: federated instruction tuning of a tiny chat Llama.

`fedtune coordinator serve`, two `fedtune worker run`, `fedtune admin`: two rounds of DoRA with packing,
gradient accumulation, clipping and a cosine schedule over both rounds, then `models export` and
peft's own loader. The sites report the instruction metrics (generation included) through the real
coordinator, and `fedtune bench report` scores every round's global adapter on a held-out chat file.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.daemon.cluster import E2E_SITES, FEDTUNE, Cluster, clean_env
from tests.fixtures.tiny import instruction_spec, make_instruction_data, make_tiny_model

pytestmark = pytest.mark.slow


def test_instruction_tuning_runs_two_rounds_reports_generation_and_its_dora_export_loads_in_peft(
    cluster: Cluster, tmp_path: Path, model_root: Path
) -> None:
    # Prepare
    make_tiny_model(model_root, "tiny-chat", "llama-chat")
    roots = {}
    for seed, site in enumerate(E2E_SITES):
        roots[site] = tmp_path / "chat" / site
        make_instruction_data(roots[site], n_train=32, n_eval=8, seed=seed)
    spec = instruction_spec(
        peft={"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "use_dora": True, "use_rslora": True},
        training={
            "max_steps": 4,
            "batch_size": 4,
            "gradient_accumulation_steps": 2,
            "max_grad_norm": 1.0,
            "learning_rate": 2e-2,
            "lr_schedule": "cosine",
            "warmup_ratio": 0.1,
            "packing": True,
            "max_length": 20,  # cuts the `messages` half of the examples: truncated_examples > 0
        },
        stages=[
            {"kind": "finetune", "rounds": 2, "selection": {"min_sites": 2}, "strategy": {"name": "fedavg"}}
        ],
        evaluation={"generate": {"max_new_tokens": 6, "examples": 5, "batch_size": 4}},
    )
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(json.loads(spec.to_json()), sort_keys=False))
    cluster.start_coordinator()
    for site in E2E_SITES:
        cluster.add_site(site)
        cluster.start_worker(site, roots[site], model_root)
    cluster.wait_workers_online(E2E_SITES)

    # Execute
    experiment_id = str(cluster.admin("experiment", "submit", str(spec_path), "--start")["experiment_id"])
    shown = cluster.wait_experiment(experiment_id, timeout=240)

    # Assert: two committed rounds of both sites with the instruction metrics
    assert shown["state"] == "completed", shown
    rounds = cluster.admin("rounds", experiment_id)["rounds"]
    assert [r["state"] for r in rounds] == ["committed", "committed"]
    assert all(r["updates_received"] == 2 for r in rounds)
    metrics = rounds[-1]["metrics"]
    assert metrics["truncated_examples"] > 0 and "eval_perplexity" in metrics
    assert metrics["worker_peak_rss_mb"] > 50
    for update in rounds[-1]["site_updates"]:  # each site's generation figures, as its worker measured them
        site_metrics = update["metrics"]
        assert site_metrics["eval_generated_examples"] == 5.0
        assert 0.0 <= site_metrics["eval_exact_match"] <= site_metrics["eval_rouge_l"] + 1e-9 <= 1.0 + 1e-9
    models = cluster.admin("models", "list", "--experiment", experiment_id)["models"]
    version = next(m for m in models if m["version"] == 2)
    export_dir = tmp_path / "export"
    cluster.admin("models", "export", version["version_id"], "--out", str(export_dir))

    # Assert: the export is a DoRA adapter peft loads
    from peft import PeftModel
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    exported = load_file(str(export_dir / "adapter_model.safetensors"))
    assert any("lora_magnitude_vector" in name for name in exported)
    base = AutoModelForCausalLM.from_pretrained(str(model_root / "tiny-chat"))
    model = PeftModel.from_pretrained(base, str(export_dir))
    assert model.peft_config["default"].use_dora and model.peft_config["default"].use_rslora

    # Assert: `fedtune bench report` scores the initial and both aggregated adapters on a held-out file
    _assert_generative_report(cluster, tmp_path, model_root, experiment_id, rounds)


def _assert_generative_report(
    cluster: Cluster, tmp_path: Path, model_root: Path, experiment_id: str, rounds: list[dict]
) -> None:
    test_dir = tmp_path / "held-out"
    make_instruction_data(test_dir, n_train=1, n_eval=6, seed=99)
    out = tmp_path / "report"
    command = [*FEDTUNE, "bench", "report", experiment_id, "--test", str(test_dir / "eval.jsonl")]
    command += ["--model-root", str(model_root), "--out", str(out), "--coordinator", cluster.address]
    result = subprocess.run(
        command, capture_output=True, text=True, env=clean_env(), cwd=tmp_path, timeout=180
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert report["report"] == "generative" and report["test"]["examples"] == 6
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2] and report["sites"] == E2E_SITES
    for row in report["rounds"]:
        assert row["test_perplexity"] == pytest.approx(2.718281828 ** row["test_loss"], rel=1e-6)
        assert 0.0 <= row["test_exact_match"] <= 1.0 and 0.0 <= row["test_rouge_l"] <= 1.0
        assert row["test_generated_examples"] == 5.0  # the spec's evaluation.generate.examples
    assert report["rounds"][2]["test_loss"] < report["rounds"][0]["test_loss"]
    # per-site figures are what each worker reported for its update
    for row, info in zip(report["rounds"][1:], rounds, strict=True):
        reported = {u["site"]: u["metrics"]["eval_rouge_l"] for u in info["site_updates"]}
        assert {s: m["eval_rouge_l"] for s, m in row["site_metrics"].items()} == reported
    table = (out / "report.md").read_text()
    assert "| 2 | finetune 2 |" in table and "## eval_exact_match % per site" in table
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not (out / "work").exists()
