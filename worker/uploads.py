"""Resumable upload of a task's update over PushUpdate.

The update streams as a header (task, metrics, manifest, side files) and then chunks. After a break
the worker asks GetUploadStatus and resumes where the coordinator stopped, restarts when it holds
nothing, or is done when it already holds the whole update. A resume the coordinator refuses (its
partial was lost in a crash) starts again from byte 0 instead of dropping the task.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import grpc

from fedtune.limits import clip_metrics
from fedtune.serde import UpdateHeaderRecord, update_header_to_proto
from fedtune.tensorstream.manifest import Manifest
from fedtune.v1 import worker_pb2
from worker.retry import RpcFailure, Stopped, is_transient, rpc_status

if TYPE_CHECKING:
    from worker.connection import Connection
    from worker.task_io import TaskOutput

log = logging.getLogger("fedtune.worker.connection")  # one logger for the whole gRPC side

# Statuses with which a coordinator refuses to continue an upload at the position it reported (the
# partial was lost in a crash, cut short, or did not match: BAD_CHUNK, NOT_FOUND, a sha256 mismatch
# over the resumed prefix, an older coordinator's storage error). Sending from byte 0 fixes those.
RESTART_AFTER_REFUSED_RESUME = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.INTERNAL,
    }
)
# How often one upload starts again from byte 0 after a refused resume before the task gives up.
MAX_UPLOAD_RESTARTS = 3


def push_update(
    connection: Connection,
    task_id: str,
    output: TaskOutput,
    *,
    cancel: threading.Event | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> worker_pb2.PushUpdateResponse:
    """Stream header + chunks; after a break, resume where the coordinator stopped."""
    from fedtune.tensorstream.encoder import manifest_for_arrays

    manifest = manifest_for_arrays(output.arrays, output.dtypes)
    start: tuple[int, int] | None = (0, 0)
    backoff = connection.new_backoff()
    restarts = 0
    while True:
        if start is None:  # the coordinator already holds the whole update
            return worker_pb2.PushUpdateResponse(received_bytes=manifest.total_bytes)
        requests = _upload_requests(connection, task_id, output, manifest, start, cancel, progress)
        try:
            answer: worker_pb2.PushUpdateResponse = connection.stub.PushUpdate(
                requests, metadata=connection.metadata
            )
            return answer
        except grpc.RpcError as err:
            code, details = rpc_status(err)
            if connection.stopping(cancel):
                raise Stopped("stopping") from None
            if not is_transient(code, details):
                resumed = start != (0, 0)
                if resumed and code in RESTART_AFTER_REFUSED_RESUME and restarts < MAX_UPLOAD_RESTARTS:
                    restarts += 1
                    log.warning(
                        "the coordinator could not continue the upload for task %s at tensor %d offset %d "
                        "(%s: %s); sending it again from the beginning",
                        task_id,
                        *start,
                        code.name,
                        details,
                    )
                    start = (0, 0)
                    continue
                raise RpcFailure("PushUpdate", code, details) from None
            delay = backoff.next_delay()
            log.warning(
                "upload for task %s broke (%s: %s); asking what the coordinator holds in %.1fs",
                task_id,
                code.name,
                details,
                delay,
            )
            connection.wait(delay, cancel)
            start = connection.upload_position(task_id, cancel)


def _upload_requests(
    connection: Connection,
    task_id: str,
    output: TaskOutput,
    manifest: Manifest,
    start: tuple[int, int],
    cancel: threading.Event | None,
    progress: Callable[[int, int], None] | None,
) -> Iterator[worker_pb2.PushUpdateRequest]:
    from fedtune.tensorstream.encoder import iter_chunks_from_arrays
    from fedtune.tensorstream.serde import chunk_to_proto

    resume = start != (0, 0)
    header = UpdateHeaderRecord(
        task_id=task_id,
        num_examples=int(output.num_examples),
        manifest=manifest,
        metrics=clip_metrics(output.metrics),  # what the coordinator's door accepts (fedtune.limits)
        files=dict(output.files),
        resume=resume,
        encoding=output.encoding,
    )
    if resume:
        log.info("resuming upload for task %s at tensor %d offset %d", task_id, *start)
    yield worker_pb2.PushUpdateRequest(header=update_header_to_proto(header))
    total = manifest.total_bytes
    sent = _bytes_before(manifest, *start)
    for chunk in iter_chunks_from_arrays(
        output.arrays,
        manifest,
        chunk_bytes=connection.settings.chunk_bytes,
        start_tensor=start[0],
        start_offset=start[1],
    ):
        if connection.stopping(cancel):
            return  # ends the stream early; the server sees an incomplete upload
        yield worker_pb2.PushUpdateRequest(chunk=chunk_to_proto(chunk))
        sent += len(chunk.data)
        if progress is not None:
            progress(sent, total)


def _bytes_before(manifest: Manifest, tensor: int, offset: int) -> int:
    return sum(t.nbytes for t in manifest.tensors[:tensor]) + offset


__all__ = ["push_update"]
