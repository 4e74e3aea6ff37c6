"""Resuming an upload after a coordinator crash: status and resume agree, and nothing stalls.

A kill -9 can leave a progress sidecar whose partial file is gone or cut short. GetUploadStatus must
then not report a position that resume cannot continue from, a resumed push must fall back to a fresh
upload (refusing a stale position with a clear message), and the worker must send the update again
from byte 0 instead of dropping the task.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from fedtune.tensorstream.decoder import StreamDecoder, progress_path
from fedtune.tensorstream.encoder import iter_chunks_from_arrays, manifest_for_arrays
from fedtune.tensorstream.safetensors_file import partial_path
from fedtune.v1 import worker_pb2
from tests.support.cluster import SITES, Cluster, spec_yaml
from tests.support.fake_worker import FakeWorker
from tests.support.flow import assert_arrays_close, committed_version, initialize, pull_train, train_update
from worker.connection import Connection
from worker.settings import WorkerSettings
from worker.task_io import TaskOutput


def _lose_partial(out: Path) -> None:
    partial_path(out).unlink()


def _cut_partial(out: Path) -> None:
    partial = partial_path(out)
    os.truncate(partial, partial.stat().st_size // 2)


CRASH_LEFTOVERS = {"sidecar without partial": _lose_partial, "partial shorter than sidecar": _cut_partial}


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "w": rng.standard_normal((8, 8)).astype(np.float32),
        "b": rng.standard_normal(8).astype(np.float32),
    }


@pytest.mark.parametrize("crash", CRASH_LEFTOVERS.values(), ids=CRASH_LEFTOVERS.keys())
def test_peek_progress_reports_only_a_position_resume_accepts(
    tmp_path: Path, crash: Callable[[Path], None]
) -> None:
    # Prepare: half an upload received and checkpointed, then the crash leftovers
    arrays = _arrays()
    manifest = manifest_for_arrays(arrays)
    out = tmp_path / "update.safetensors"
    chunks = list(iter_chunks_from_arrays(arrays, manifest, 64))
    decoder = StreamDecoder(manifest, out)
    for chunk in chunks[:3]:
        decoder.add(chunk)
    decoder.close()
    assert StreamDecoder.peek_progress(out) == (chunks[3].tensor_index, chunks[3].offset)
    crash(out)

    # Execute
    position = StreamDecoder.peek_progress(out)
    resumed, restarted = StreamDecoder.resume_or_restart(manifest, out)
    for chunk in chunks:
        resumed.add(chunk)

    # Assert: nothing to resume is reported, the resume restarts from 0, and the full stream finishes
    assert position is None and progress_path(out).exists()
    assert restarted
    assert resumed.finish() == manifest.digest


@pytest.mark.parametrize("crash", CRASH_LEFTOVERS.values(), ids=CRASH_LEFTOVERS.keys())
def test_status_and_resume_agree_after_a_crash_and_the_update_completes(
    cluster_factory: Callable[..., Cluster],  # noqa: F811
    crash: Callable[[Path], None],
) -> None:
    # Prepare: a broken upload that left a partial + sidecar, then the leftovers of a crash
    cluster = cluster_factory()
    admin = cluster.admin()
    a = cluster.worker("a")
    experiment_id, _ = initialize(admin, [a], spec_yaml(rounds=1, min_sites=1))
    task = pull_train(a)
    update = train_update(a, task, np.random.default_rng(3))
    with pytest.raises(grpc.RpcError):
        a.push(task.task_id, update, num_examples=4, stop_after_chunks=2)
    before = a.upload_status(task.task_id)
    assert before.in_progress and (before.next_tensor, before.next_offset) != (0, 0)
    round_id = admin.rounds(experiment_id)[0].round_id
    crash(Path(cluster.settings.data_dir) / "spool" / round_id / f"{task.task_id}.safetensors")

    # Execute: status; a client that kept the old position; then a resume from what status says
    after = a.upload_status(task.task_id)
    with pytest.raises(grpc.RpcError) as stale:
        a.push(task.task_id, update, num_examples=4, resume_from=(before.next_tensor, before.next_offset))
    status = a.upload_status(task.task_id)
    a.push(task.task_id, update, num_examples=4, resume_from=(status.next_tensor, status.next_offset))
    version_id = committed_version(admin, experiment_id, 1)

    # Assert
    assert not after.in_progress and not after.complete
    assert stale.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "send the update again from tensor 0 offset 0" in (stale.value.details() or "")
    assert (status.next_tensor, status.next_offset) == (0, 0)
    assert_arrays_close(a.fetch(version_id), update)


class _Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection reset"


class _BreakFirstUpload:
    """The worker's stub, except that its first PushUpdate sends the header and two chunks, then the
    connection 'breaks' (UNAVAILABLE), as when the coordinator is killed mid-upload."""

    def __init__(self, stub: Any, worker: FakeWorker) -> None:
        self._stub, self._worker, self.calls = stub, worker, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)

    def PushUpdate(self, requests: Iterator[worker_pb2.PushUpdateRequest], **kwargs: Any) -> Any:  # noqa: N802
        self.calls += 1
        if self.calls > 1:
            return self._stub.PushUpdate(requests, **kwargs)
        first = [next(requests) for _ in range(3)]
        with pytest.raises(grpc.RpcError):  # the server keeps the verified prefix of the cut stream
            self._stub.PushUpdate(iter(first), metadata=self._worker.metadata, timeout=10)
        raise _Unavailable()


def test_worker_sends_the_update_again_when_the_coordinator_cannot_resume_it(
    cluster_factory: Callable[..., Cluster],  # noqa: F811
    tmp_path: Path,
) -> None:
    # Prepare: a real worker connection whose first upload breaks; between the status read and the
    # resume, the coordinator loses the partial (crash), so it refuses the resume position
    cluster = cluster_factory()
    admin = cluster.admin()
    a = cluster.worker("a")
    experiment_id, _ = initialize(admin, [a], spec_yaml(rounds=1, min_sites=1))
    task = pull_train(a)
    update = train_update(a, task, np.random.default_rng(8))
    round_id = admin.rounds(experiment_id)[0].round_id
    spool = Path(cluster.settings.data_dir) / "spool" / round_id / f"{task.task_id}.safetensors"
    settings = WorkerSettings(
        coordinator=cluster.target,
        site="a",
        token=SITES["a"],
        data_root=tmp_path,
        model_root=tmp_path,
        chunk_bytes=1024,
    )
    connection = Connection(settings)
    connection.backoff_base_seconds = 0.05
    connection.stub = _BreakFirstUpload(connection.stub, a)  # type: ignore[assignment]
    positions: list[tuple[int, int] | None] = []
    real_position = connection.upload_position

    def position_then_crash(task_id: str, cancel: Any = None) -> tuple[int, int] | None:
        position = real_position(task_id, cancel)
        positions.append(position)
        _lose_partial(spool)
        return position

    connection.upload_position = position_then_crash  # type: ignore[method-assign]

    # Execute
    try:
        answer = connection.push_update(task.task_id, TaskOutput(update, num_examples=6, metrics={}))
    finally:
        connection.close()
    version_id = committed_version(admin, experiment_id, 1)

    # Assert: it resumed at the reported position, was refused, and sent everything again
    assert positions and positions[0] not in (None, (0, 0))
    assert answer.update_id and answer.received_bytes == manifest_for_arrays(update).total_bytes
    assert_arrays_close(a.fetch(version_id), update)
