from __future__ import annotations

import zlib

import numpy as np
import pytest

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.encoder import iter_chunks_from_arrays, manifest_for_arrays
from fedtune.tensorstream.manifest import Chunk
from fedtune.tensorstream.serde import (
    chunk_from_proto,
    chunk_to_proto,
    manifest_from_proto,
    manifest_to_proto,
)
from fedtune.v1 import common_pb2
from tests.tensorstream.helpers import every_dtype_arrays


def test_manifest_round_trips_through_proto() -> None:
    arrays, dtypes = every_dtype_arrays()
    manifest = manifest_for_arrays(arrays, dtypes)

    wire = common_pb2.Manifest.FromString(manifest_to_proto(manifest).SerializeToString())

    assert manifest_from_proto(wire) == manifest


def test_chunk_round_trips_through_proto() -> None:
    arrays = {"w": np.arange(100, dtype=np.float32)}
    chunks = list(iter_chunks_from_arrays(arrays, manifest_for_arrays(arrays), chunk_bytes=64))

    back = [
        chunk_from_proto(common_pb2.TensorChunk.FromString(chunk_to_proto(c).SerializeToString()))
        for c in chunks
    ]

    assert back == chunks
    assert back[1] == Chunk(0, 64, arrays["w"].tobytes()[64:128], zlib.crc32(arrays["w"].tobytes()[64:128]))


@pytest.mark.parametrize(
    "tensor",
    [
        common_pb2.TensorInfo(name="a", dtype="complex64", shape=[2], nbytes=16),
        common_pb2.TensorInfo(name="a", dtype="float32", shape=[2], nbytes=7),
        common_pb2.TensorInfo(name="a", dtype="float32", shape=[-2], nbytes=8),
        common_pb2.TensorInfo(name="", dtype="float32", shape=[2], nbytes=8),
    ],
)
def test_rejects_invalid_tensor_in_proto_manifest(tensor: common_pb2.TensorInfo) -> None:
    with pytest.raises(FedtuneError) as err:
        manifest_from_proto(common_pb2.Manifest(tensors=[tensor]))

    assert err.value.code is ErrorCode.BAD_MANIFEST


def test_rejects_duplicate_names_and_malformed_digest_in_proto_manifest() -> None:
    t = common_pb2.TensorInfo(name="a", dtype="int8", shape=[2], nbytes=2)

    for proto in (common_pb2.Manifest(tensors=[t, t]), common_pb2.Manifest(tensors=[t], digest="xyz")):
        with pytest.raises(FedtuneError) as err:
            manifest_from_proto(proto)
        assert err.value.code is ErrorCode.BAD_MANIFEST
