"""End to end, as a user runs it: `fedtune coordinator serve`, two `fedtune worker run`, `fedtune admin`.

A tiny BERT with LoRA, two sites, two rounds; then the registry's lineage and an exported adapter
that peft loads. The resilience test SIGKILLs a worker mid-training and restarts it.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.daemon.cluster import E2E_LABELS, E2E_SITES, FEDTUNE, Cluster, clean_env, running_cluster, wait_for
from tests.fixtures.tiny import tiny_spec

pytestmark = pytest.mark.slow


@pytest.fixture
def short_lease_cluster(tmp_path: Path, port: int) -> Iterator[Cluster]:
    yield from running_cluster(tmp_path, port, FEDTUNE_TASK_LEASE_SECONDS="5")


def _submit(cluster: Cluster, tmp_path: Path, training: dict[str, Any]) -> str:
    spec = tiny_spec(
        training={"batch_size": 8, "learning_rate": 5e-3, "max_length": 32, "seed": 0, **training}
    )
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(json.loads(spec.to_json()), sort_keys=False))
    return str(cluster.admin("experiment", "submit", str(spec_path), "--start")["experiment_id"])


def _assert_lineage(cluster: Cluster, experiment_id: str) -> list[dict[str, Any]]:
    models = cluster.admin("models", "list", "--experiment", experiment_id)["models"]
    by_version = {m["version"]: m for m in models}
    assert sorted(by_version) == [0, 1, 2], models
    for version in (1, 2):
        assert by_version[version]["parent_id"] == by_version[version - 1]["version_id"]
    return [by_version[v] for v in (0, 1, 2)]


def test_two_workers_finish_a_two_round_lora_experiment_and_the_adapter_loads_in_peft(
    cluster: Cluster, tmp_path: Path, model_root: Path, data_roots: dict[str, Path]
) -> None:
    # Prepare: coordinator, two sites, two workers
    cluster.start_coordinator()
    for site in E2E_SITES:
        cluster.add_site(site)
        cluster.start_worker(site, data_roots[site], model_root)
    cluster.wait_workers_online(E2E_SITES)
    # Execute
    experiment_id = _submit(cluster, tmp_path, {"max_steps": 8})
    shown = cluster.wait_experiment(experiment_id, timeout=240)
    # Assert: completed, versions 0..2 chained, exported adapter loads and classifies
    assert shown["state"] == "completed", shown
    versions = _assert_lineage(cluster, experiment_id)
    export_dir = tmp_path / "export"
    cluster.admin("models", "export", versions[-1]["version_id"], "--out", str(export_dir))
    assert (export_dir / "adapter_config.json").exists()

    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base_dir = model_root / "tiny-bert"
    base = AutoModelForSequenceClassification.from_pretrained(str(base_dir), num_labels=len(E2E_LABELS))
    model = PeftModel.from_pretrained(base, str(export_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    with torch.no_grad():
        logits = model(**tokenizer(["the coach said the match had a late goal"], return_tensors="pt")).logits
    assert logits.shape == (1, len(E2E_LABELS))
    assert int(logits.argmax(-1)) in range(len(E2E_LABELS))
    # the workers logged what they did, and only tensors + metrics left the site
    for site in E2E_SITES:
        log = cluster.log_text(f"worker-{site}")
        assert "registered as" in log and re.search(r"task \S+ received: train", log)
        assert re.search(r"upload \S+: 100%", log)

    # `fedtune bench report` scores every round's global model on a held-out file the user holds
    _assert_report_scores_each_round(cluster, tmp_path, model_root, data_roots, experiment_id)


def _bench_report(cluster: Cluster, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [*FEDTUNE, "bench", "report", *args, "--coordinator", cluster.address]
    return subprocess.run(command, capture_output=True, text=True, env=clean_env(), cwd=tmp_path, timeout=180)


def _assert_report_scores_each_round(
    cluster: Cluster, tmp_path: Path, model_root: Path, data_roots: dict[str, Path], experiment_id: str
) -> None:
    test_file = data_roots["site-a"] / "eval.jsonl"
    out = tmp_path / "report"
    result = _bench_report(
        cluster,
        tmp_path,
        experiment_id,
        "--test",
        str(test_file),
        "--model-root",
        str(model_root),
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2] and report["sites"] == E2E_SITES
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in report["rounds"])
    assert report["test"]["examples"] == len(test_file.read_text().splitlines())
    # per-site figures are what each worker reported for its update (the Admin API's site_updates)
    rounds = cluster.admin("rounds", experiment_id)["rounds"]
    for row, info in zip(report["rounds"][1:], rounds, strict=True):
        reported = {u["site"]: u["metrics"]["eval_accuracy"] for u in info["site_updates"]}
        assert {s: m["eval_accuracy"] for s, m in row["site_metrics"].items()} == reported
    assert "| 2 | finetune 2 |" in (out / "report.md").read_text()
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not (out / "work").exists()
    # a label the spec does not know is reported with its file and line, never its value (decision 24);
    # an unknown experiment is exit 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a late goal", "label": "sport"}\n{"text": "rates", "label": "weather"}\n')
    wrong = _bench_report(
        cluster, tmp_path, experiment_id, "--test", str(bad), "--model-root", str(model_root)
    )
    # the loader names file, line and field, never the value (a site's data must not leave it in errors)
    assert wrong.returncode == 1
    assert f"{bad}:2: field 'label' holds a label that is not one of" in wrong.stderr
    assert "weather" not in wrong.stderr
    missing = _bench_report(
        cluster, tmp_path, "exp-nope", "--test", str(bad), "--model-root", str(model_root)
    )
    assert missing.returncode == 3 and "exp-nope" in missing.stderr


def test_a_worker_killed_mid_training_rejoins_and_the_experiment_finishes(
    short_lease_cluster: Cluster, tmp_path: Path, model_root: Path, data_roots: dict[str, Path]
) -> None:
    # Prepare: enough local steps that the kill lands during training
    cluster = short_lease_cluster
    cluster.start_coordinator()
    for site in E2E_SITES:
        cluster.add_site(site)
        cluster.start_worker(site, data_roots[site], model_root)
    cluster.wait_workers_online(E2E_SITES)
    experiment_id = _submit(cluster, tmp_path, {"max_steps": 300})
    victim = "worker-site-b"
    # Execute: SIGKILL site-b once it reports training progress, then restart it with the same token
    training = wait_for(
        lambda: re.search(r"task (\S+): step \d+/300", cluster.log_text(victim)),
        180,
        "site-b to train",
        interval=0.1,
    )
    cluster.kill(victim)
    before_kill = cluster.log_text(victim)
    assert f"update for task {training.group(1)} accepted" not in before_kill, (
        "the kill landed after the upload"
    )
    cluster.start_worker("site-b", data_roots["site-b"], model_root)
    shown = cluster.wait_experiment(experiment_id, timeout=300)
    # Assert
    assert shown["state"] == "completed", shown
    _assert_lineage(cluster, experiment_id)
    assert cluster.log_text(victim).count("registered as") >= 2


def test_a_worker_stops_within_seconds_of_sigterm_mid_training(
    short_lease_cluster: Cluster, tmp_path: Path, model_root: Path, data_roots: dict[str, Path]
) -> None:
    # Prepare: a task long enough to train for minutes
    cluster = short_lease_cluster
    cluster.start_coordinator()
    site = E2E_SITES[0]
    cluster.add_site(site)
    worker = cluster.start_worker(site, data_roots[site], model_root)
    cluster.wait_workers_online([site])
    _submit(cluster, tmp_path, {"max_steps": 100_000})
    wait_for(
        lambda: re.search(r"task \S+: step \d+/100000", cluster.log_text(f"worker-{site}")),
        180,
        "the worker to train",
        interval=0.1,
    )
    # Execute
    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    code = worker.wait(timeout=60)
    stopped_after = time.monotonic() - sent
    # Assert: it ends between two steps, drops the task (the coordinator re-leases it) and exits 0
    log = cluster.log_text(f"worker-{site}")
    assert code == 0, log[-2000:]
    assert stopped_after < 10, f"the worker took {stopped_after:.1f} s to stop"
    assert "abandoned: worker stopping" in log
