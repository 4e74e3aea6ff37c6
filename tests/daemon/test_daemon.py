"""WorkerDaemon against the fake coordinator, with the training entry points replaced by fakes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from fedtune.spec import ExperimentSpec, parse_spec
from fedtune.tensorstream.safetensors_file import read_arrays
from fedtune.tensorstream.serde import manifest_to_proto
from fedtune.v1 import worker_pb2
from tests.daemon.fake_coordinator import FakeCoordinator
from worker import tasks
from worker.daemon import WorkerDaemon
from worker.settings import WorkerSettings
from worker.task_io import TaskOutput

SPEC: ExperimentSpec = parse_spec(
    {
        "name": "t",
        "base_model": {"name": "tiny-bert"},
        "labels": ["a", "b"],
        "stages": [{"kind": "finetune"}],
    }
)
GLOBAL = {"lora_A": np.arange(300, dtype=np.float32).reshape(10, 30), "lora_B": np.ones(50, np.float32)}


def _wait(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def _no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        WorkerDaemon, "capabilities", lambda self: ({"kind": "cpu", "name": "test"}, {"t": 3})
    )


@pytest.fixture
def start(
    settings: WorkerSettings,
) -> Iterator[Callable[[], tuple[WorkerDaemon, threading.Event, list[int]]]]:
    threads: list[tuple[threading.Thread, threading.Event]] = []

    def _start() -> tuple[WorkerDaemon, threading.Event, list[int]]:
        daemon, stop, codes = WorkerDaemon(settings), threading.Event(), []
        thread = threading.Thread(target=lambda: codes.append(daemon.run(stop)), daemon=True)
        thread.start()
        threads.append((thread, stop))
        return daemon, stop, codes

    yield _start
    for thread, stop in threads:
        stop.set()
        thread.join(timeout=10)


def _task(
    fake: FakeCoordinator,
    kind: int,
    task_id: str = "t1",
    update_kind: str = "weights",
    spec: ExperimentSpec = SPEC,
) -> None:
    manifest = fake.servicer.add_version("v0", GLOBAL)
    fake.servicer.tasks.append(
        worker_pb2.Task(
            task_id=task_id,
            kind=kind,
            experiment_id="exp1",
            stage="finetune",
            stage_index=0,
            round=1,
            spec_json=spec.to_json(),
            model_version_id="v0",
            model_manifest=manifest_to_proto(manifest),
            update_kind=update_kind,
        )
    )


def test_train_task_fetches_the_version_trains_and_pushes_the_update(
    fake: FakeCoordinator, start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    seen: dict[str, Any] = {}

    def fake_train(
        spec: ExperimentSpec, stage_index: int, round: int, global_path: Path, *a: Any, **kw: Any
    ) -> Any:
        seen["global"] = read_arrays(global_path)
        seen["site"] = kw["site"]
        kw["progress"]("step 1/2 loss 0.7")
        return TaskOutput({k: v + 1 for k, v in seen["global"].items()}, 12, {"train_loss": 0.5})

    monkeypatch.setattr(tasks, "run_train", fake_train)
    _task(fake, worker_pb2.TASK_KIND_TRAIN)
    # Execute
    start()
    _wait(lambda: "t1" in fake.servicer.uploads and bool(fake.servicer.uploads["t1"].digest))
    # Assert: trained on the fetched tensors, pushed weights + metrics
    assert seen["global"]["lora_A"].tobytes() == GLOBAL["lora_A"].tobytes()
    assert seen["site"] == "site-a"
    pushed = read_arrays(fake.servicer.spool / "t1.safetensors")
    np.testing.assert_array_equal(pushed["lora_B"], GLOBAL["lora_B"] + 1)
    header = fake.servicer.uploads["t1"].headers[0]
    assert header.num_examples == 12 and header.metrics["train_loss"] == 0.5


def test_train_task_asking_for_a_delta_is_refused_rather_than_answered_with_weights(
    fake: FakeCoordinator, start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: update_kind is deprecated (worker.proto); a site sends trained weights only
    trained: list[bool] = []

    def fake_train(*a: Any, **kw: Any) -> TaskOutput:
        trained.append(True)
        return TaskOutput({k: v * 3 for k, v in GLOBAL.items()}, 1, {})

    monkeypatch.setattr(tasks, "run_train", fake_train)
    _task(fake, worker_pb2.TASK_KIND_TRAIN, update_kind="delta")

    # Execute
    start()
    _wait(lambda: len(fake.servicer.results) == 1)

    # Assert: failed with the reason, nothing trained and nothing pushed
    result = fake.servicer.results[0]
    assert not result.ok and "update_kind 'delta'" in result.error
    assert not trained and "t1" not in fake.servicer.uploads


def test_failing_training_is_reported_without_a_foreign_message_and_the_daemon_goes_on(
    fake: FakeCoordinator, start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*a: Any, **kw: Any) -> Any:
        raise ValueError("invalid literal for int(): 'SECRET-PATIENT-NAME-123'")

    monkeypatch.setattr(tasks, "run_train", boom)
    _task(fake, worker_pb2.TASK_KIND_TRAIN)
    start()
    _wait(lambda: len(fake.servicer.results) == 1)
    result = fake.servicer.results[0]
    assert (result.task_id, result.ok) == ("t1", False)
    assert result.error.startswith("ValueError") and "worker log" in result.error
    assert "SECRET" not in result.error  # a library's message may quote data: only the type leaves
    pulls = fake.servicer.calls["PullTask"]
    _wait(lambda: fake.servicer.calls["PullTask"] > pulls)


def test_a_quantized_base_on_a_site_that_cannot_run_it_fails_the_task_with_the_reason(
    fake: FakeCoordinator, start: Any
) -> None:
    # Prepare: the real training entry point; this site has no CUDA (or no bitsandbytes)
    qlora = parse_spec({**SPEC.model_dump(), "base_model": {"name": "tiny-bert", "quantization": "nf4"}})
    _task(fake, worker_pb2.TASK_KIND_TRAIN, spec=qlora)
    # Execute
    start()
    _wait(lambda: len(fake.servicer.results) == 1)
    # Assert: failed with the site's reason, nothing pushed, and the daemon goes on
    result = fake.servicer.results[0]
    assert not result.ok and "base_model.quantization nf4" in result.error
    assert "needs a CUDA GPU" in result.error or "needs the bitsandbytes package" in result.error
    assert "t1" not in fake.servicer.uploads
    pulls = fake.servicer.calls["PullTask"]
    _wait(lambda: fake.servicer.calls["PullTask"] > pulls)


def test_rejected_upload_fails_the_task_with_the_servers_message(
    fake: FakeCoordinator, start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "run_train", lambda *a, **kw: TaskOutput(dict(GLOBAL), 1, {}))
    fake.servicer.fail["PushUpdate"] = [grpc.StatusCode.INVALID_ARGUMENT]
    _task(fake, worker_pb2.TASK_KIND_TRAIN)
    start()
    _wait(lambda: len(fake.servicer.results) == 1)
    assert not fake.servicer.results[0].ok
    assert "PushUpdate rejected: injected INVALID_ARGUMENT" in fake.servicer.results[0].error


def test_evaluate_task_is_refused_as_a_kind_no_coordinator_issues(fake: FakeCoordinator, start: Any) -> None:
    # Prepare: TASK_KIND_EVALUATE is reserved in worker.proto
    _task(fake, worker_pb2.TASK_KIND_EVALUATE)

    # Execute
    start()
    _wait(lambda: len(fake.servicer.results) == 1)

    # Assert
    result = fake.servicer.results[0]
    assert not result.ok and "task kind evaluate is not known" in result.error


def test_task_with_a_malformed_manifest_is_reported_failed_and_the_daemon_goes_on(
    fake: FakeCoordinator, start: Any
) -> None:
    # Prepare: a manifest that does not decode (fedtune.serde refuses an unknown dtype)
    _task(fake, worker_pb2.TASK_KIND_TRAIN)
    fake.servicer.tasks[0].model_manifest.tensors[0].dtype = "float99"

    # Execute
    start()
    _wait(lambda: len(fake.servicer.results) == 1)
    pulls = fake.servicer.calls["PullTask"]

    # Assert
    result = fake.servicer.results[0]
    assert (result.task_id, result.ok) == ("t1", False) and "float99" in result.error
    _wait(lambda: fake.servicer.calls["PullTask"] > pulls)


def test_every_task_runs_on_the_daemons_one_model_factory(
    fake: FakeCoordinator, start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    factories: list[object] = []

    def fake_train(*a: Any, models: object, **kw: Any) -> TaskOutput:
        factories.append(models)
        return TaskOutput(dict(GLOBAL), 1, {})

    monkeypatch.setattr(tasks, "run_train", fake_train)
    _task(fake, worker_pb2.TASK_KIND_TRAIN, task_id="t1")
    _task(fake, worker_pb2.TASK_KIND_TRAIN, task_id="t2")

    # Execute
    daemon, _, _ = start()
    _wait(lambda: len(factories) == 2)

    # Assert: one factory, the daemon's, so the second round reuses the loaded model
    assert factories[0] is factories[1] is daemon.models


def test_personalize_task_saves_under_the_work_dir(
    fake: FakeCoordinator, start: Any, settings: WorkerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Path] = {}

    def personalize(*a: Any, out_dir: Path, **kw: Any) -> TaskOutput:
        seen["out_dir"] = out_dir
        return TaskOutput({}, 5, {"personal_eval_accuracy": 0.9})

    monkeypatch.setattr(tasks, "run_personalize", personalize)
    _task(fake, worker_pb2.TASK_KIND_PERSONALIZE)
    start()
    _wait(lambda: len(fake.servicer.results) == 1)
    assert seen["out_dir"] == settings.data_root / ".fedtune" / "personalized" / "exp1"
    assert fake.servicer.results[0].metrics["personal_eval_accuracy"] == 0.9


def test_registers_again_when_the_coordinator_forgets_the_worker(fake: FakeCoordinator, start: Any) -> None:
    start()
    _wait(lambda: fake.servicer.calls["Register"] == 1 and fake.servicer.calls["PullTask"] >= 1)
    fake.servicer.known_workers.clear()  # a restarted coordinator
    _wait(lambda: fake.servicer.calls["Register"] >= 2)
    _wait(lambda: any(h.worker_id == "w-2" for h in fake.servicer.heartbeats))


def test_keeps_retrying_while_the_coordinator_is_unavailable(fake: FakeCoordinator, start: Any) -> None:
    fake.servicer.fail["Register"] = [grpc.StatusCode.UNAVAILABLE] * 3
    start()
    _wait(lambda: fake.servicer.calls["PullTask"] >= 1)
    assert fake.servicer.calls["Register"] == 4


def test_heartbeat_cancel_abandons_the_running_task(
    fake: FakeCoordinator, start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: training that reports progress until told to stop
    def long_train(*a: Any, progress: Callable[[str], None], **kw: Any) -> Any:
        for step in range(1000):
            progress(f"step {step}")
            time.sleep(0.02)
        raise AssertionError("training was not abandoned")

    monkeypatch.setattr(tasks, "run_train", long_train)
    fake.servicer.cancel_task_ids.add("t1")
    _task(fake, worker_pb2.TASK_KIND_TRAIN)
    # Execute
    daemon, _, _ = start()
    _wait(lambda: any(h.task_id == "t1" for h in fake.servicer.heartbeats))
    # Assert: the task is dropped without an upload or a report, and the daemon pulls again
    _wait(lambda: daemon.current is None)
    assert "t1" not in fake.servicer.uploads and fake.servicer.results == []


def test_stop_abandons_the_running_task_without_failing_it_and_exits_zero(
    fake: FakeCoordinator, start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = threading.Event()

    def long_train(*a: Any, progress: Callable[[str], None], **kw: Any) -> Any:
        started.set()
        while True:
            progress("training")
            time.sleep(0.02)

    monkeypatch.setattr(tasks, "run_train", long_train)
    _task(fake, worker_pb2.TASK_KIND_TRAIN)
    daemon, stop, codes = start()
    assert started.wait(10)
    stop.set()
    _wait(lambda: codes == [0])
    assert fake.servicer.results == [] and "t1" not in fake.servicer.uploads


def test_a_refused_token_stops_the_worker_with_exit_code_2(fake: FakeCoordinator, start: Any) -> None:
    fake.servicer.fail["Register"] = [grpc.StatusCode.UNAUTHENTICATED]
    _, _, codes = start()
    _wait(lambda: codes == [2])
