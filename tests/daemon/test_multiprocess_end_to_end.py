"""End to end with real processes: a site whose worker trains on two processes (torchrun + DDP, gloo).

`fedtune coordinator serve`, `fedtune worker run --processes 2`, `fedtune admin`: the round's update,
computed by two ranks and uploaded by the daemon, equals one-process training of the same task; a
SIGTERM or a SIGKILL to the daemon leaves no training process behind.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.daemon.cluster import Cluster
from tests.fixtures.tiny import instruction_spec, make_instruction_data, make_tiny_model
from tests.support.processes import processes_naming
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow
SITE = "site-a"


def _submit(cluster: Cluster, tmp_path: Path, training: dict[str, Any]) -> tuple[str, Path]:
    spec = instruction_spec(
        data={"train": "train.jsonl", "eval": "eval.jsonl"},
        training=training,
        stages=[
            {"kind": "finetune", "rounds": 1, "selection": {"min_sites": 1}, "strategy": {"name": "fedavg"}}
        ],
    )
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(json.loads(spec.to_json()), sort_keys=False))
    experiment_id = str(cluster.admin("experiment", "submit", str(spec_path), "--start")["experiment_id"])
    return experiment_id, spec_path


def _export(cluster: Cluster, experiment_id: str, version: int, out: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    models = cluster.admin("models", "list", "--experiment", experiment_id)["models"]
    version_id = next(m["version_id"] for m in models if m["version"] == version)
    cluster.admin("models", "export", version_id, "--out", str(out))
    return load_file(str(out / "adapter_model.safetensors"))


def test_a_two_process_site_uploads_the_update_one_process_computes(
    cluster: Cluster, tmp_path: Path, model_root: Path
) -> None:
    # Prepare
    make_tiny_model(model_root, "tiny-chat", "llama-chat")
    data_root = tmp_path / "chat"
    make_instruction_data(data_root, n_train=32, n_eval=8, seed=0)
    cluster.start_coordinator()
    cluster.add_site(SITE)
    cluster.start_worker(SITE, data_root, model_root, "--processes", "2")
    cluster.wait_workers_online([SITE])
    training = {"max_steps": 3, "batch_size": 2, "gradient_accumulation_steps": 3, "learning_rate": 1e-2}

    # Execute
    experiment_id, spec_path = _submit(cluster, tmp_path, {**training, "proximal_mu": 0.1})
    shown = cluster.wait_experiment(experiment_id, timeout=300)

    # Assert: committed, trained by two processes, the daemon's log tells so
    assert shown["state"] == "completed", shown
    (round_one,) = cluster.admin("rounds", experiment_id)["rounds"]
    assert round_one["state"] == "committed" and round_one["updates_received"] == 1
    assert round_one["metrics"]["training_processes"] == 2
    assert "eval_loss" in round_one["metrics"]
    assert "training on 2 processes" in cluster.log_text(f"worker-{SITE}")
    assert not processes_naming(data_root / ".fedtune" / "ranks")

    # Assert: the update equals one process training the same task from the same initial version
    from fedtune.spec import load_spec_json
    from fedtune.tensorstream.safetensors_file import write_safetensors
    from worker.tasks import run_train

    initial = _export(cluster, experiment_id, 0, tmp_path / "v0")
    trained = _export(cluster, experiment_id, 1, tmp_path / "v1")
    global_path = tmp_path / "initial.safetensors"
    write_safetensors(global_path, initial)
    spec = load_spec_json(json.dumps(yaml.safe_load(spec_path.read_text())))
    alone = run_train(
        spec, 0, 1, global_path, data_root, model_root, site=SITE, progress=lambda _: None, device="cpu"
    )
    assert alone.arrays.keys() == trained.keys()
    for name, array in alone.arrays.items():
        np.testing.assert_allclose(trained[name], array, rtol=1e-4, atol=1e-6)
        assert not np.allclose(trained[name], initial[name])


def test_sigterm_or_sigkill_to_the_daemon_ends_every_training_process(
    cluster: Cluster, tmp_path: Path, model_root: Path
) -> None:
    # Prepare: a task that would train for a long time
    make_tiny_model(model_root, "tiny-chat", "llama-chat")
    data_root = tmp_path / "chat"
    make_instruction_data(data_root, n_train=32, n_eval=8, seed=0)
    ranks = data_root / ".fedtune" / "ranks"
    cluster.start_coordinator()
    cluster.add_site(SITE)
    worker = cluster.start_worker(SITE, data_root, model_root, "--processes", "2")
    cluster.wait_workers_online([SITE])
    _submit(cluster, tmp_path, {"max_steps": 100000, "batch_size": 2})
    wait_for(lambda: len(processes_naming(ranks)) >= 3, 180, "torchrun and its two ranks", interval=0.5)

    # Execute: SIGTERM
    worker.send_signal(signal.SIGTERM)

    # Assert: the daemon exits 0 and takes its training processes with it, within seconds
    assert worker.wait(timeout=30) == 0, cluster.tail(f"worker-{SITE}")
    wait_for(lambda: not processes_naming(ranks), 15, "the training processes to end after SIGTERM")

    # Execute: a new daemon takes the task back; then SIGKILL (no graceful path at all)
    worker = cluster.start_worker(SITE, data_root, model_root, "--processes", "2")
    wait_for(lambda: len(processes_naming(ranks)) >= 3, 240, "the reassigned task's ranks", interval=0.5)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)

    # Assert: torchrun ends with the daemon, the ranks with torchrun
    wait_for(lambda: not processes_naming(ranks), 20, "the training processes to end after SIGKILL")
