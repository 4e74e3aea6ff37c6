"""The worker's Prometheus endpoint (``--metrics-port``): the daemon against the fake coordinator, with
training replaced by a fake, scraped over HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from fedtune.spec import ExperimentSpec, parse_spec
from fedtune.tensorstream.serde import manifest_to_proto
from fedtune.v1 import worker_pb2
from tests.daemon.fake_coordinator import FakeCoordinator
from tests.support.scrape import scrape, scrape_until, value
from worker import tasks
from worker.daemon import WorkerDaemon
from worker.metrics import WorkerMetrics
from worker.settings import WorkerSettings
from worker.task_io import TaskOutput

SPEC: ExperimentSpec = parse_spec(
    {"name": "t", "base_model": {"name": "tiny-bert"}, "labels": ["a", "b"], "stages": [{"kind": "finetune"}]}
)
GLOBAL = {"lora_A": np.arange(300, dtype=np.float32).reshape(10, 30), "lora_B": np.ones(50, np.float32)}
GLOBAL_BYTES = sum(a.nbytes for a in GLOBAL.values())


@pytest.fixture
def running(settings: WorkerSettings, monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkerDaemon]:
    """A daemon serving its metrics on a free port (no torch: capabilities are faked)."""
    monkeypatch.setattr(
        WorkerDaemon, "capabilities", lambda self: ({"kind": "cpu", "name": "test"}, {"t": 3})
    )
    daemon, stop = WorkerDaemon(settings.model_copy(update={"metrics_port": 0})), threading.Event()
    thread = threading.Thread(target=daemon.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield daemon
    finally:
        stop.set()
        thread.join(timeout=10)


def _train_task(fake: FakeCoordinator, task_id: str) -> None:
    manifest = fake.servicer.add_version("v0", GLOBAL)
    fake.servicer.tasks.append(
        worker_pb2.Task(
            task_id=task_id,
            kind=worker_pb2.TASK_KIND_TRAIN,
            experiment_id="exp1",
            stage="finetune",
            stage_index=0,
            round=1,
            spec_json=SPEC.to_json(),
            model_version_id="v0",
            model_manifest=manifest_to_proto(manifest),
            update_kind="weights",
        )
    )


def test_the_worker_endpoint_counts_tasks_step_time_bytes_and_rpc_errors(
    fake: FakeCoordinator, running: WorkerDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the first Register is refused once (retried); t1 trains 4 steps in 2 s, t2 fails
    def fake_train(
        spec: ExperimentSpec, stage_index: int, round: int, global_path: Path, *a: Any, **kw: Any
    ) -> Any:
        if not fake.servicer.uploads:
            return TaskOutput(
                {k: v + 1 for k, v in GLOBAL.items()}, 5, {"train_steps": 4.0, "train_seconds": 2.0}
            )
        raise ValueError("boom")

    monkeypatch.setattr(tasks, "run_train", fake_train)
    fake.servicer.fail["Register"] = [grpc.StatusCode.UNAVAILABLE]
    _train_task(fake, "t1")
    _train_task(fake, "t2")

    # Execute
    endpoint = scrape_until_served(running)
    samples = scrape_until(
        endpoint, lambda s: value(s, "fedtune_worker_tasks_total", kind="train", outcome="failed") == 1
    )

    # Assert
    assert value(samples, "fedtune_worker_info", site="site-a", version=_version(samples)) == 1
    assert value(samples, "fedtune_worker_tasks_total", kind="train", outcome="done") == 1
    assert value(samples, "fedtune_worker_task_seconds_count", kind="train") == 2
    assert value(samples, "fedtune_worker_last_task_seconds", kind="train") > 0
    assert value(samples, "fedtune_worker_train_steps_total") == 4
    assert value(samples, "fedtune_worker_train_step_seconds") == 0.5
    assert value(samples, "fedtune_worker_bytes_received_total") == GLOBAL_BYTES  # t2 reads the cached v0
    assert value(samples, "fedtune_worker_bytes_sent_total") == GLOBAL_BYTES
    assert value(samples, "fedtune_worker_rpc_errors_total", method="Register", code="UNAVAILABLE") == 1
    assert value(samples, "fedtune_worker_peak_rss_bytes") > 1 << 20
    assert value(samples, "fedtune_worker_busy") == 0


def scrape_until_served(daemon: WorkerDaemon) -> str:
    """The daemon's metrics URL once its endpoint answers."""
    for _ in range(200):
        endpoint = daemon.metrics_endpoint
        if endpoint is not None:
            scrape(endpoint.url)
            return endpoint.url
        threading.Event().wait(0.05)
    raise AssertionError("the worker did not serve its metrics")


def _version(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> str:
    (version,) = [dict(labels)["version"] for name, labels in samples if name == "fedtune_worker_info"]
    return version


def test_the_worker_endpoint_is_off_by_default(settings: WorkerSettings) -> None:
    # Assert
    assert settings.metrics_port is None
    assert WorkerDaemon(settings).metrics_endpoint is None


def test_transfer_progress_is_counted_once_and_a_restart_counts_from_zero() -> None:
    # Prepare
    metrics = WorkerMetrics("site-a", "test")
    seen: list[tuple[int, int]] = []
    report = metrics.counting(metrics.bytes_sent, lambda done, total: seen.append((done, total)))

    # Execute: 0 -> 40 -> 100, a restart from 0 -> 30 -> 100
    for done in (40, 100, 30, 100):
        report(done, 100)

    # Assert: 100 + 70 counted (the first chunk after the restart is not known to be new), callback kept
    assert metrics.registry.get_sample_value("fedtune_worker_bytes_sent_total") == 170
    assert seen[-1] == (100, 100)


def test_training_figures_missing_or_zero_change_nothing() -> None:
    # Prepare
    metrics = WorkerMetrics("site-a", "test")

    # Execute: a DP task reports no train figures; a task with no steps
    metrics.task_output({})
    metrics.task_output({"train_steps": 0.0, "train_seconds": 1.0})

    # Assert
    assert metrics.registry.get_sample_value("fedtune_worker_train_steps_total") == 0
    assert metrics.registry.get_sample_value("fedtune_worker_train_step_seconds") == 0
