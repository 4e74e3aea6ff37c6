"""Hand-built PushUpdate requests (for sending what a well-behaved worker never would) and
`expect_error`, which asserts that a call fails with a given gRPC status and message."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import grpc
import pytest

from fedtune.serde import UpdateHeaderRecord, update_header_to_proto
from fedtune.tensorstream.manifest import Manifest
from fedtune.v1 import common_pb2, worker_pb2
from tests.support.fake_worker import FakeWorker


def expect_error(call: Callable[[], object], code: grpc.StatusCode, text: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == code, caught.value.details()
    assert text in caught.value.details(), caught.value.details()


def header_only(task_id: str, manifest: Manifest, num_examples: int = 5) -> worker_pb2.PushUpdateRequest:
    header = UpdateHeaderRecord(task_id=task_id, num_examples=num_examples, manifest=manifest)
    return worker_pb2.PushUpdateRequest(header=update_header_to_proto(header))


def raw_chunk(index: int, offset: int, data: bytes, crc: int | None = None) -> worker_pb2.PushUpdateRequest:
    crc = zlib.crc32(data) if crc is None else crc
    return worker_pb2.PushUpdateRequest(
        chunk=common_pb2.TensorChunk(tensor_index=index, offset=offset, data=data, crc32=crc)
    )


def push_raw(worker: FakeWorker, requests: list[worker_pb2.PushUpdateRequest]) -> Callable[[], object]:
    def call() -> object:
        return worker.stub.PushUpdate(iter(requests), metadata=worker.metadata, timeout=10)

    return call
