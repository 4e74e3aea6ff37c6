"""The door: every field a site sends is bounded and checked before it reaches the registry, so SQLite
and PostgreSQL give the same INVALID_ARGUMENT (PostgreSQL used to answer INTERNAL: NUL in text, NaN in
JSON, 3e9 in an INTEGER column, a 100-character worker version), and a refused push leaves no spool
file behind. Real coordinator over gRPC on 127.0.0.1, against every database backend."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedtune import limits
from fedtune.tensorstream.encoder import manifest_for_arrays
from fedtune.tensorstream.manifest import Manifest, TensorSpec
from tests.support.cluster import Cluster, spec_yaml
from tests.support.fake_worker import initial_arrays
from tests.support.flow import initialize, pull_train, submit, train_update
from tests.support.waiting import wait_for
from tests.support.wire import header_only, push_raw, raw_chunk

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def refused(call: Callable[[], object], code: grpc.StatusCode, *words: str) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    details = str(caught.value.details())
    assert caught.value.code() == code, details
    for word in words:
        assert word in details, details
    return details


def spool_files(coordinator: Cluster) -> list[Path]:
    spool = Path(coordinator.settings.data_dir) / "spool"
    return sorted(p for p in spool.rglob("*") if p.is_file()) if spool.exists() else []


def test_every_over_limit_field_of_a_site_gets_invalid_argument_naming_it(
    cluster_factory: Callable[..., Cluster],  # noqa: F811
) -> None:
    # Prepare: a leased train task of site a
    cluster = cluster_factory()
    admin = cluster.admin()
    a, b = cluster.worker("a"), cluster.worker("b")
    experiment_id, _ = initialize(admin, [a, b], spec_yaml(rounds=1, min_sites=1, sites=["a"]))
    task = pull_train(a)
    good = train_update(a, task, np.random.default_rng(3))
    fresh = cluster.worker("c", register=False)
    nan, long_text = float("nan"), "x" * (limits.MAX_ERROR_CHARS + 1)
    too_many = {f"m{i}": 1.0 for i in range(limits.MAX_METRICS + 1)}
    cases: list[tuple[Callable[[], object], str]] = [
        # Register
        (lambda: fresh.register(worker_version="v" * 100), "worker_version"),
        (lambda: fresh.register(worker_version="1.0\x00"), "worker_version"),
        (lambda: fresh.register(device_name="gpu" * 200), "device.name"),
        (lambda: fresh.register(dataset_sizes={f"f{i}": 1 for i in range(300)}), "dataset_sizes"),
        (lambda: fresh.register(dataset_sizes={"train\x00.jsonl": 1}), "dataset_sizes"),
        # Heartbeat
        (lambda: a.heartbeat(task.task_id, progress="p" * 2000), "progress"),
        (lambda: a.heartbeat("task\x00"), "task_id"),
        # ReportResult
        (lambda: a.report(task.task_id, ok=False, error=long_text), "error"),
        (lambda: a.report(task.task_id, ok=False, error="boom\x00"), "error"),
        (lambda: a.report(task.task_id, ok=False, metrics={"loss": nan}), "metrics"),
        (lambda: a.report(task.task_id, ok=False, metrics={"lo\x00ss": 1.0}), "metrics"),
        (lambda: a.report(task.task_id, ok=False, metrics=too_many), "metrics"),
        (lambda: a.report(task.task_id, ok=False, num_examples=3_000_000_000), "num_examples"),
        # PushUpdate header
        (lambda: a.push(task.task_id, good, num_examples=3_000_000_000), "num_examples"),
        (lambda: a.push(task.task_id, good, num_examples=2**40), "max_update_examples"),
        (lambda: a.push(task.task_id, good, num_examples=5, metrics={"loss": nan}), "metrics"),
        (lambda: a.push(task.task_id, good, num_examples=5, metrics={"k" * 100: 1.0}), "metrics"),
        (lambda: a.push(task.task_id, good, num_examples=5, metrics=too_many), "metrics"),
        (lambda: a.push(task.task_id, good, num_examples=5, files={"../x.json": b"{}"}), "files"),
        (lambda: a.push("task\x00", good, num_examples=5), "task_id"),
    ]

    # Execute + Assert: each one is refused with INVALID_ARGUMENT naming its field, never INTERNAL
    for call, field in cases:
        refused(call, INVALID, field)

    # Assert: nothing changed; the task still takes its good update, and no refusal left a spool file
    assert spool_files(cluster) == []
    assert a.push(task.task_id, good, num_examples=5).update_id
    experiment = admin.experiment(experiment_id)
    assert experiment.state in ("running", "completed")


def test_a_nul_site_name_is_unauthenticated_not_internal(
    cluster_factory: Callable[..., Cluster],  # noqa: F811
) -> None:
    # Prepare
    cluster = cluster_factory()
    intruder = cluster.worker("a", register=False)
    intruder.site = "a\x00"

    # Execute + Assert
    refused(intruder.register, grpc.StatusCode.UNAUTHENTICATED, "unknown site")


def test_init_upload_with_bad_tensor_names_too_many_tensors_or_bad_side_files_is_refused(
    cluster_factory: Callable[..., Cluster],  # noqa: F811
) -> None:
    # Prepare: the INIT task of a new experiment
    cluster = cluster_factory()
    admin = cluster.admin()
    a = cluster.worker("a")
    submit(admin, spec_yaml(rounds=1, min_sites=1, sites=["a"]))
    task = wait_for(lambda: a.pull(wait_seconds=0.5))
    arrays = initial_arrays()
    empty_digest = hashlib.sha256(b"").hexdigest()
    crowd = Manifest(
        tuple(TensorSpec(f"t{i}", "float32", (0,), 0) for i in range(limits.MAX_TENSORS + 1)), empty_digest
    )

    # Execute + Assert
    for bad_name in ("../../etc/passwd", "layer\x00.weight", "__metadata__", "n" * 600):
        renamed = {bad_name: arrays["layer.1.bias"]}
        refused(lambda renamed=renamed: a.push(task.task_id, renamed, num_examples=0), INVALID, "manifest")
    refused(push_raw(a, [header_only(task.task_id, crowd, num_examples=0)]), INVALID, "tensors")
    for bad_file in ("../adapter_config.json", "sub/adapter_config.json", ".hidden", "a\x00.json"):
        refused(
            lambda bad_file=bad_file: a.push(task.task_id, arrays, num_examples=0, files={bad_file: b"{}"}),
            INVALID,
            "files",
        )
    big = {"adapter_config.json": b" " * (limits.MAX_SIDE_FILE_BYTES + 1)}
    refused(lambda: a.push(task.task_id, arrays, num_examples=0, files=big), INVALID, "files")

    # Assert: the task is still open for a good INIT upload
    assert spool_files(cluster) == []
    assert a.do_init(task)


def test_values_beyond_max_update_abs_value_are_refused_chunk_by_chunk(
    cluster_factory: Callable[..., Cluster],  # noqa: F811
) -> None:
    # Prepare
    cluster = cluster_factory(max_update_abs_value=1e6, max_update_examples=1000)
    admin = cluster.admin()
    a = cluster.worker("a")
    initialize(admin, [a], spec_yaml(rounds=1, min_sites=1, sites=["a"]))
    task = pull_train(a)
    good = train_update(a, task, np.random.default_rng(4))
    absurd = {k: v.copy() for k, v in good.items()}
    absurd[next(iter(absurd))].flat[-1] = 3e38

    # Execute + Assert
    refused(lambda: a.push(task.task_id, absurd, num_examples=5), INVALID, "max_update_abs_value", "1e+06")
    refused(lambda: a.push(task.task_id, good, num_examples=1001), INVALID, "num_examples", "1000")
    assert a.push(task.task_id, good, num_examples=1000).update_id


def test_a_refused_push_leaves_no_spool_file_but_a_broken_one_keeps_its_prefix(
    cluster_factory: Callable[..., Cluster],  # noqa: F811
) -> None:
    # Prepare
    cluster = cluster_factory()
    admin = cluster.admin()
    a = cluster.worker("a")
    initialize(admin, [a], spec_yaml(rounds=1, min_sites=1, sites=["a"]))
    task = pull_train(a)
    good = train_update(a, task, np.random.default_rng(5))
    manifest = manifest_for_arrays(good)
    with_nan = {k: v.copy() for k, v in good.items()}
    with_nan[list(with_nan)[-1]].flat[0] = np.nan
    first = next(iter(good.values())).tobytes()

    # Execute + Assert: refused content (NaN late in the stream, a bad crc) removes the partial upload
    refused(lambda: a.push(task.task_id, with_nan, num_examples=5, chunk_bytes=64), INVALID, "NaN")
    assert spool_files(cluster) == []
    refused(
        push_raw(
            a,
            [
                header_only(task.task_id, manifest),
                raw_chunk(0, 0, first[:64]),
                raw_chunk(0, 64, first[64:128], crc=1),
            ],
        ),
        grpc.StatusCode.DATA_LOSS,
        "crc32",
    )
    assert spool_files(cluster) == []

    # Execute + Assert: a stream that breaks off keeps its verified prefix (resumable, as before)
    refused(
        lambda: a.push(task.task_id, good, num_examples=5, chunk_bytes=64, stop_after_chunks=2),
        grpc.StatusCode.DATA_LOSS,
        "before the update was complete",
    )
    assert any(p.name.endswith(".partial") for p in spool_files(cluster))
    assert a.upload_status(task.task_id).in_progress


def test_the_worker_clips_what_the_door_would_refuse() -> None:
    # Prepare: what a site's training could produce
    metrics = {f"m{i}": float(i) for i in range(200)} | {"nan": float("nan"), "k\x00": 1.0, "k" * 99: 1.0}
    error = "Traceback\x00 " + "e" * 10_000

    # Execute: the worker's own clipping (worker/connection.py, worker/uploads.py)
    sent_metrics = limits.clip_metrics(metrics)
    sent_error = limits.clip_text(error, 2000)

    # Assert: the door accepts both
    limits.check_metrics("metrics", sent_metrics)
    limits.check_text("error", sent_error, limits.MAX_ERROR_CHARS)
    assert len(sent_metrics) == limits.MAX_METRICS and sent_error.endswith(limits.TRUNCATED_MARK)
