"""The one seam between wire (fedtune.v1.common_pb2) and domain (Manifest, Chunk) for tensor streams."""

from __future__ import annotations

import re

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.manifest import Chunk, Manifest, TensorSpec
from fedtune.v1 import common_pb2

_DIGEST = re.compile(r"[0-9a-f]{64}")


def manifest_to_proto(m: Manifest) -> common_pb2.Manifest:
    return common_pb2.Manifest(
        tensors=[
            common_pb2.TensorInfo(name=t.name, dtype=t.dtype, shape=list(t.shape), nbytes=t.nbytes)
            for t in m.tensors
        ],
        digest=m.digest,
    )


def manifest_from_proto(p: common_pb2.Manifest) -> Manifest:
    """The domain manifest; BAD_MANIFEST for unknown dtypes, bad shapes/sizes, duplicates or a bad digest."""
    manifest = Manifest(
        tensors=tuple(
            TensorSpec(t.name, t.dtype, tuple(int(d) for d in t.shape), int(t.nbytes)) for t in p.tensors
        ),
        digest=p.digest,
    )
    manifest.validate()
    if manifest.digest and not _DIGEST.fullmatch(manifest.digest):
        raise FedtuneError(
            ErrorCode.BAD_MANIFEST,
            f"manifest digest {manifest.digest[:80]!r} is not a sha256 hex string (64 lowercase hex chars)",
        )
    return manifest


def chunk_to_proto(c: Chunk) -> common_pb2.TensorChunk:
    return common_pb2.TensorChunk(tensor_index=c.tensor_index, offset=c.offset, data=c.data, crc32=c.crc32)


def chunk_from_proto(p: common_pb2.TensorChunk) -> Chunk:
    """The domain chunk (its position, size and crc are checked by StreamDecoder.add)."""
    return Chunk(
        tensor_index=int(p.tensor_index), offset=int(p.offset), data=bytes(p.data), crc32=int(p.crc32)
    )
