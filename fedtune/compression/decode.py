"""The coordinator's decode of a verified, spooled encoded update into the model's layout.

Reads the encoded file, the task's model version (the base) and writes ``base + delta`` in the model
version's layout and dtypes, `chunk_elements` values at a time: memory O(chunk) whatever the model
size or k. Every malformed content is refused before the result is committed: top-k indices out of
range or not strictly increasing (INVALID_ARGUMENT naming the tensor), negative scales
(INVALID_ARGUMENT), and a rebuilt value that is not finite or beyond `max_abs_value` (NON_FINITE), the
same door as a plain update's values.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fedtune.compression.codec import dequantize_int8
from fedtune.compression.encoding import (
    INDEX_SUFFIX,
    SCALE_SUFFIX,
    VALUE_SUFFIX,
    UpdateEncoding,
    check_encoded_manifest,
    effective_block,
)
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.dtypes import to_float32, wire_dtype
from fedtune.tensorstream.manifest import Manifest, TensorSpec
from fedtune.tensorstream.safetensors_file import SafetensorsFileWriter, read_header

DEFAULT_CHUNK_ELEMENTS = 1 << 18


class TensorFileReader:
    """Element ranges of the tensors of a safetensors file, read with pread (no whole tensor in memory)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.manifest, data_start = read_header(self.path)
        self._specs: dict[str, TensorSpec] = {}
        self._offsets: dict[str, int] = {}
        offset = data_start
        for t in self.manifest.tensors:
            self._specs[t.name], self._offsets[t.name] = t, offset
            offset += t.nbytes
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()

    def spec(self, name: str) -> TensorSpec:
        return self._specs[name]

    def raw(self, name: str, start: int, count: int) -> np.ndarray:
        """Raw storage values [start, start + count) of tensor `name`."""
        spec = self._specs[name]
        dt = wire_dtype(spec.dtype)
        if start < 0 or count < 0 or start + count > spec.numel:
            raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"[{start}, {start + count}) outside {name!r}")
        data = os.pread(self._file.fileno(), count * dt.itemsize, self._offsets[name] + start * dt.itemsize)
        if len(data) != count * dt.itemsize:
            raise FedtuneError(ErrorCode.STORAGE, f"{self.path} ends inside tensor {name!r}")
        return np.frombuffer(data, dtype=dt.storage)

    def float32(self, name: str, start: int, count: int) -> np.ndarray:
        return to_float32(self.raw(name, start, count), self._specs[name].dtype)

    def close(self) -> None:
        self._file.close()


class _Values:
    """Decoded float32 values of one values-encoded tensor (dense delta or top-k values), by range."""

    def __init__(self, reader: TensorFileReader, name: str, encoding: UpdateEncoding) -> None:
        self._reader, self._name, self._encoding = reader, name, encoding
        self.numel = reader.spec(name).numel
        self._block = effective_block(self.numel, encoding.int8_block_size)

    def read(self, start: int, count: int) -> np.ndarray:
        if self._encoding.values != "int8":
            return self._reader.float32(self._name, start, count)
        codes = self._reader.raw(self._name, start, count)
        first = start // self._block
        last = (start + count - 1) // self._block
        scales = self._reader.float32(self._name + SCALE_SUFFIX, first, last - first + 1)
        if np.any(scales < 0):
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT,
                f"manifest tensor {self._name + SCALE_SUFFIX!r} holds a negative scale near block {first}",
            )
        return dequantize_int8(codes, scales, self._block, start, first)


def _sparse_pieces(
    reader: TensorFileReader, name: str, encoding: UpdateEncoding, numel: int, chunk: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(indices, values) of tensor `name`'s top-k entries in pieces of `chunk`, each index checked."""
    index_name = name + INDEX_SUFFIX
    values = _Values(reader, name + VALUE_SUFFIX, encoding)
    previous = -1
    for start in range(0, values.numel, chunk):
        count = min(chunk, values.numel - start)
        indices = reader.raw(index_name, start, count).astype(np.int64)
        if indices.min() < 0 or indices.max() >= numel:
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT,
                f"manifest tensor {index_name!r}: an index is outside [0, {numel}) (entries from {start})",
            )
        if indices[0] <= previous or (count > 1 and bool(np.any(np.diff(indices) <= 0))):
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT,
                f"manifest tensor {index_name!r}: indices must be strictly increasing (entries from {start})",
            )
        previous = int(indices[-1])
        yield indices, values.read(start, count)


class _SparseDelta:
    """The dense delta of a top-k tensor, range by range in increasing order (O(chunk) buffered)."""

    def __init__(self, pieces: Iterator[tuple[np.ndarray, np.ndarray]]) -> None:
        self._pieces = pieces
        self._indices = np.zeros(0, np.int64)
        self._values = np.zeros(0, np.float32)

    def read(self, start: int, count: int) -> np.ndarray:
        dense = np.zeros(count, np.float32)
        end = start + count
        while True:
            if self._indices.size == 0:
                piece = next(self._pieces, None)
                if piece is None:
                    return dense
                self._indices, self._values = piece
            cut = int(np.searchsorted(self._indices, end))
            dense[self._indices[:cut] - start] = self._values[:cut]
            self._indices, self._values = self._indices[cut:], self._values[cut:]
            if self._indices.size:  # the next entry lies past this range
                return dense


def decode_update(
    encoded_path: Path,
    encoding: UpdateEncoding,
    model: Manifest,
    base_path: Path,
    out_path: Path,
    *,
    max_abs_value: float | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> None:
    """Write ``base + decoded delta`` of the update at `encoded_path` to `out_path` (model layout).

    `out_path` may be `encoded_path` itself: the result is written beside it and renamed over it
    only once every value passed. A refusal leaves `out_path` as it was (the caller discards)."""
    staging = out_path.with_name(out_path.name + ".decoding")
    reader = TensorFileReader(encoded_path)
    base = TensorFileReader(base_path)
    try:
        check_encoded_manifest(model, encoding, reader.manifest)
        if not base.manifest.same_layout(model):
            raise FedtuneError(ErrorCode.STORAGE, f"model version file {base_path} is not the task's layout")
        element = 0
        with SafetensorsFileWriter(staging, model) as writer:
            for t in model.tensors:
                delta: _Values | _SparseDelta = (
                    _SparseDelta(_sparse_pieces(reader, t.name, encoding, t.numel, chunk_elements))
                    if encoding.topk
                    else _Values(reader, t.name, encoding)
                )
                for start in range(0, t.numel, chunk_elements):
                    count = min(chunk_elements, t.numel - start)
                    values = base.float32(t.name, start, count) + delta.read(start, count)
                    _check_values(t.name, start, values, max_abs_value)
                    writer.write_flat_float32(element + start, values)
                element += t.numel
        staging.replace(out_path)  # the writer committed (fsynced) it on a clean exit
    finally:
        staging.unlink(missing_ok=True)
        reader.close()
        base.close()


def _check_values(name: str, start: int, values: np.ndarray, max_abs_value: float | None) -> None:
    if not bool(np.isfinite(values).all()):
        raise FedtuneError(
            ErrorCode.NON_FINITE, f"tensor {name!r} decodes to NaN or Inf near element {start}"
        )
    if max_abs_value is not None and values.size:
        largest = float(np.abs(values).max())
        if largest > max_abs_value:
            raise FedtuneError(
                ErrorCode.NON_FINITE,
                f"tensor {name!r} decodes to a value of magnitude {largest:g} near element {start}; the "
                f"limit is {max_abs_value:g} (the coordinator's max_update_abs_value)",
            )
