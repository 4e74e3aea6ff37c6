"""Encoder: manifests and chunk streams from in-memory arrays or from safetensors files.

A stream is every tensor's raw little-endian bytes in manifest order, cut into chunks of at most
`chunk_bytes` (rounded down to a multiple of the tensor's itemsize, and never spanning tensors).
Empty tensors produce no chunk. `start_tensor` / `start_offset` resume a stream at a position a
receiver reported (e.g. ``StreamDecoder.peek_progress``).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.dtypes import storage_array, wire_dtype
from fedtune.tensorstream.manifest import DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES, Chunk, Manifest, TensorSpec
from fedtune.tensorstream.safetensors_file import data_digest, read_header


def manifest_for_arrays(
    arrays: Mapping[str, np.ndarray], dtypes: Mapping[str, str] | None = None
) -> Manifest:
    """The manifest (with digest) of `arrays` in mapping order; `dtypes` marks uint16 arrays as "bfloat16"."""
    dtypes = dtypes or {}
    specs = [TensorSpec.for_array(name, array, dtypes.get(name)) for name, array in arrays.items()]
    manifest = Manifest.of(specs)
    manifest.validate()
    sha = hashlib.sha256()
    for spec in specs:
        sha.update(storage_array(arrays[spec.name], spec.dtype).reshape(-1).view(np.uint8).data)
    return Manifest(manifest.tensors, sha.hexdigest())


def manifest_for_file(path: Path) -> Manifest:
    """The manifest of a safetensors file, with its digest computed by streaming the data section."""
    manifest, _ = read_header(path)
    return Manifest(manifest.tensors, data_digest(path))


def _check_start(manifest: Manifest, chunk_bytes: int, start_tensor: int, start_offset: int) -> None:
    if not 0 < chunk_bytes <= MAX_CHUNK_BYTES:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT, f"chunk_bytes must be in [1, {MAX_CHUNK_BYTES}], got {chunk_bytes}"
        )
    count = len(manifest.tensors)
    if not 0 <= start_tensor <= count:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT, f"start_tensor {start_tensor} outside [0, {count}] for this manifest"
        )
    nbytes = manifest.tensors[start_tensor].nbytes if start_tensor < count else 0
    itemsize = wire_dtype(manifest.tensors[start_tensor].dtype).itemsize if start_tensor < count else 1
    if not 0 <= start_offset <= nbytes or start_offset % itemsize:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"start_offset {start_offset} is not an itemsize-aligned offset inside tensor {start_tensor} "
            f"({nbytes} bytes)",
        )


def _step(spec: TensorSpec, chunk_bytes: int) -> int:
    itemsize = wire_dtype(spec.dtype).itemsize
    return max(itemsize, chunk_bytes // itemsize * itemsize)


def _chunk(tensor_index: int, offset: int, data: bytes) -> Chunk:
    return Chunk(tensor_index, offset, data, zlib.crc32(data))


def iter_chunks_from_arrays(
    arrays: Mapping[str, np.ndarray],
    manifest: Manifest,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    start_tensor: int = 0,
    start_offset: int = 0,
) -> Iterator[Chunk]:
    """The chunks of `arrays` laid out as `manifest` (arrays are looked up by tensor name)."""
    _check_start(manifest, chunk_bytes, start_tensor, start_offset)
    for index in range(start_tensor, len(manifest.tensors)):
        spec = manifest.tensors[index]
        if spec.name not in arrays:
            raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"no array for manifest tensor {spec.name!r}")
        raw = storage_array(arrays[spec.name], spec.dtype)
        if raw.nbytes != spec.nbytes or raw.shape != spec.shape:
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT,
                f"array {spec.name!r} has shape {raw.shape}, the manifest says {spec.shape}",
            )
        data = raw.reshape(-1).view(np.uint8)
        step = _step(spec, chunk_bytes)
        first = start_offset if index == start_tensor else 0
        for offset in range(first, spec.nbytes, step):
            yield _chunk(index, offset, data[offset : offset + step].tobytes())


def iter_chunks_from_file(
    path: Path,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    start_tensor: int = 0,
    start_offset: int = 0,
) -> Iterator[Chunk]:
    """The chunks of a safetensors file's tensors in data order, reading the file piecewise."""
    manifest, data_start = read_header(path)
    _check_start(manifest, chunk_bytes, start_tensor, start_offset)
    tensor_start = data_start + sum(t.nbytes for t in manifest.tensors[:start_tensor])
    with open(path, "rb") as f:
        for index in range(start_tensor, len(manifest.tensors)):
            spec = manifest.tensors[index]
            step = _step(spec, chunk_bytes)
            first = start_offset if index == start_tensor else 0
            f.seek(tensor_start + first)
            for offset in range(first, spec.nbytes, step):
                data = f.read(min(step, spec.nbytes - offset))
                if offset + len(data) < min(offset + step, spec.nbytes):
                    raise FedtuneError(ErrorCode.BAD_MANIFEST, f"{path} ends inside tensor {spec.name!r}")
                yield _chunk(index, offset, data)
            tensor_start += spec.nbytes
