"""Resumable download of a model version over FetchTensors.

A broken stream resumes at the decoder's next position: the ``.partial`` file is kept, also across
worker restarts, and a later fetch of the same manifest continues from it. A version with no digest
in the task (a stage's base version) first asks the coordinator for its manifest.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from fedtune.tensorstream.manifest import Manifest
from fedtune.v1 import worker_pb2
from worker.retry import UNARY_TIMEOUT_S, RpcFailure, Stopped, is_transient, rpc_status

if TYPE_CHECKING:
    from worker.connection import Connection

log = logging.getLogger("fedtune.worker.connection")  # one logger for the whole gRPC side

MAX_STALLED_ATTEMPTS = 8


def fetch_version(
    connection: Connection,
    version_id: str,
    manifest: Manifest,
    dest: Path,
    *,
    cancel: threading.Event | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Download a version into `dest/<version>-<digest>.safetensors` (cached; resumable)."""
    dest.mkdir(parents=True, exist_ok=True)
    if not manifest.digest:
        manifest = _served_manifest(connection, version_id, cancel)
    out_path = dest / f"{version_id}-{manifest.digest[:16]}.safetensors"
    if out_path.exists():
        log.info("version %s already downloaded (%s)", version_id, out_path.name)
        return out_path
    decoder = _open_decoder(manifest, out_path)
    try:
        _download(connection, version_id, manifest, decoder, cancel, progress)
    except (Stopped, RpcFailure):
        decoder.close()  # keep the .partial: a later fetch continues from it
        raise
    except BaseException:
        decoder.abort()
        raise
    decoder.finish()
    log.info("downloaded version %s (%d bytes)", version_id, manifest.total_bytes)
    return out_path


def _download(
    connection: Connection,
    version_id: str,
    manifest: Manifest,
    decoder: Any,
    cancel: threading.Event | None,
    progress: Callable[[int, int], None] | None,
) -> None:
    backoff = connection.new_backoff()
    stalled = 0
    while decoder.next_position[0] < len(manifest.tensors):
        before = decoder.received_bytes
        tensor, offset = decoder.next_position
        request = worker_pb2.FetchTensorsRequest(
            version_id=version_id,
            start_tensor=tensor,
            start_offset=offset,
            chunk_size=connection.settings.chunk_bytes,
        )
        try:
            _receive(
                connection,
                connection.stub.FetchTensors(request, metadata=connection.metadata),
                decoder,
                manifest,
                cancel,
                progress,
            )
            if decoder.complete:
                return
            code, details = grpc.StatusCode.UNAVAILABLE, "stream ended before the last chunk"
        except grpc.RpcError as err:
            code, details = rpc_status(err)
            if not is_transient(code, details):
                raise RpcFailure("FetchTensors", code, details) from None
        stalled = 0 if decoder.received_bytes > before else stalled + 1
        if stalled >= MAX_STALLED_ATTEMPTS:
            raise RpcFailure("FetchTensors", code, f"no progress after {stalled} attempts: {details}")
        if decoder.received_bytes > before:
            backoff.reset()
        delay = backoff.next_delay()
        log.warning(
            "download of %s broke at tensor %d offset %d (%s: %s); resuming in %.1fs",
            version_id,
            *decoder.next_position,
            code.name,
            details,
            delay,
        )
        connection.wait(delay, cancel)


def _served_manifest(connection: Connection, version_id: str, cancel: threading.Event | None) -> Manifest:
    from fedtune.tensorstream.serde import manifest_from_proto

    def first_item() -> Manifest:
        request = worker_pb2.FetchTensorsRequest(version_id=version_id)
        responses = connection.stub.FetchTensors(
            request, metadata=connection.metadata, timeout=UNARY_TIMEOUT_S
        )
        try:
            for item in responses:
                if item.WhichOneof("item") == "manifest":
                    return manifest_from_proto(item.manifest)
                break
        finally:
            responses.cancel()
        raise RpcFailure(
            "FetchTensors", grpc.StatusCode.DATA_LOSS, "the stream did not start with a manifest"
        )

    return connection.retrying("FetchTensors", first_item, cancel=cancel)


def _receive(
    connection: Connection,
    responses: Iterator[worker_pb2.FetchTensorsResponse],
    decoder: Any,
    manifest: Manifest,
    cancel: threading.Event | None,
    progress: Callable[[int, int], None] | None,
) -> None:
    from fedtune.tensorstream.serde import chunk_from_proto, manifest_from_proto

    total = manifest.total_bytes
    for item in responses:
        if connection.stopping(cancel):
            responses.cancel()  # type: ignore[attr-defined]
            raise Stopped("stopping")
        if item.WhichOneof("item") == "manifest":
            served = manifest_from_proto(item.manifest)
            if manifest.digest and served.digest and served.digest != manifest.digest:
                raise RpcFailure(
                    "FetchTensors",
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"server sent digest {served.digest}, task named {manifest.digest}",
                )
            continue
        chunk = chunk_from_proto(item.chunk)
        decoder.add(chunk)
        if progress is not None:
            progress(decoder.received_bytes, total)


def _open_decoder(manifest: Manifest, out_path: Path) -> Any:
    """Continue a partial download of the same manifest when one is on disk, else start afresh."""
    from fedtune.errors import FedtuneError
    from fedtune.tensorstream.decoder import StreamDecoder

    if StreamDecoder.peek_progress(out_path) is not None:
        try:
            decoder = StreamDecoder.resume(manifest, out_path)
            log.info(
                "continuing the download of %s at tensor %d offset %d", out_path.name, *decoder.next_position
            )
            return decoder
        except FedtuneError as err:
            log.warning("cannot continue %s (%s); downloading again", out_path.name, err)
    return StreamDecoder(manifest, out_path)


__all__ = ["fetch_version"]
