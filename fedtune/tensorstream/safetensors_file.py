"""Safetensors files, read and written piecewise (memory O(chunk), never the whole file).

Layout: 8-byte little-endian header length N, N bytes of JSON header (padded with spaces so the
data section is 8-byte aligned), then the data section. This module lays tensors out in manifest
order, so a file's data section is exactly the byte stream of its manifest and its sha256 is the
manifest digest. bfloat16 tensors are handled as their raw uint16 bits (numpy has no bfloat16).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import mmap
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.dtypes import (
    BY_SAFETENSORS_CODE,
    from_float32,
    storage_array,
    to_float32,
    wire_dtype,
)
from fedtune.tensorstream.hashing import BackgroundHashes
from fedtune.tensorstream.manifest import Manifest, TensorSpec

MAX_HEADER_BYTES = 100 << 20  # the limit the safetensors library applies
_READ_BYTES = 1 << 20
# A mapped piece is read whole: fault its pages in with one call rather than one trap per page.
_READ_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _bad(path: Path, why: str) -> FedtuneError:
    return FedtuneError(ErrorCode.BAD_MANIFEST, f"{path} is not a valid safetensors file: {why}")


def _parse_header(path: Path, f: BinaryIO) -> tuple[Manifest, int, dict[str, str]]:
    file_size = os.fstat(f.fileno()).st_size
    prefix = f.read(8)
    if len(prefix) < 8:
        raise _bad(path, "shorter than the 8-byte header length")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > MAX_HEADER_BYTES or 8 + header_len > file_size:
        raise _bad(path, f"header length {header_len} does not fit the file ({file_size} bytes)")
    try:
        header = json.loads(f.read(header_len))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _bad(path, f"header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise _bad(path, "header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise _bad(path, "__metadata__ is not a JSON object")
    entries: list[tuple[int, int, TensorSpec]] = []
    for name, info in header.items():
        try:
            dt = BY_SAFETENSORS_CODE.get(info["dtype"])
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (TypeError, KeyError, ValueError):
            raise _bad(path, f"tensor {name!r} needs dtype, shape and data_offsets") from None
        if dt is None:
            known = ", ".join(sorted(BY_SAFETENSORS_CODE))
            raise _bad(path, f"tensor {name!r} has unsupported dtype {info['dtype']!r} (supported: {known})")
        spec = TensorSpec(name, dt.name, shape, end - begin)
        try:
            spec.validate()
        except FedtuneError as err:
            raise _bad(path, err.message) from None
        entries.append((begin, end, spec))
    entries.sort(key=lambda e: (e[0], e[1]))  # stable: equal offsets (empty tensors) keep header order
    position = 0
    for begin, end, spec in entries:
        if begin != position:
            raise _bad(path, f"tensor {spec.name!r} starts at {begin}, expected {position} (gap or overlap)")
        position = end
    data_start = 8 + header_len
    if data_start + position != file_size:
        raise _bad(
            path, f"data section is {file_size - data_start} bytes but the header describes {position}"
        )
    return Manifest.of([e[2] for e in entries]), data_start, {str(k): str(v) for k, v in metadata.items()}


def read_header(path: Path) -> tuple[Manifest, int]:
    """The file's manifest (digest "") in data order, and the byte offset where the data section starts."""
    with open(path, "rb") as f:
        manifest, data_start, _ = _parse_header(Path(path), f)
    return manifest, data_start


def read_metadata(path: Path) -> dict[str, str]:
    """The header's ``__metadata__`` (e.g. ``{"format": "pt"}``), empty when absent."""
    with open(path, "rb") as f:
        return _parse_header(Path(path), f)[2]


def _header_bytes(manifest: Manifest, metadata: Mapping[str, str] | None) -> bytes:
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    position = 0
    for t in manifest.tensors:
        st = wire_dtype(t.dtype).safetensors
        header[t.name] = {
            "dtype": st,
            "shape": list(t.shape),
            "data_offsets": [position, position + t.nbytes],
        }
        position += t.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-(8 + len(encoded)) % 8)
    return struct.pack("<Q", len(encoded)) + encoded


@dataclass(frozen=True)
class WrittenDigests:
    file: str  # sha256 hex of the whole file (a blob store's content address)
    data: str  # sha256 hex of the data section (the manifest digest)


class SafetensorsFileWriter:
    """Writes a safetensors file for `manifest` into ``<path>.partial``, then atomically renames it.

    As a context manager: an exception discards the partial file; a clean exit commits it (if
    neither commit nor discard was called).
    """

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        metadata: dict[str, str] | None = None,
        *,
        digests: bool = False,
    ) -> None:
        """`digests=True`: hash the bytes as they are written, so that a file written front to back
        knows its sha256s without being read again (`written_digests`)."""
        manifest.validate()
        self.path = Path(path)
        self.manifest = manifest
        header = _header_bytes(manifest, metadata)
        self.data_start = len(header)
        self._hashes: BackgroundHashes | None = None  # of the whole file and of the data section
        self._hashed_to = 0  # data bytes hashed so far (writes must come in order to be hashed)
        self._digests: WrittenDigests | None = None
        if digests:
            self._hashes = BackgroundHashes(header, b"")
        self._starts = [0]
        self._element_starts = [0]
        for t in manifest.tensors:
            self._starts.append(self._starts[-1] + t.nbytes)
            self._element_starts.append(self._element_starts[-1] + t.numel)
        self._file: BinaryIO | None = open(partial_path(self.path), "wb+")  # noqa: SIM115 - closed in commit
        self._file.write(header)
        self._file.truncate(self.data_start + self._starts[-1])

    @classmethod
    def reopen(cls, path: Path, manifest: Manifest) -> SafetensorsFileWriter:
        """Reopen an existing ``<path>.partial`` written for the same layout (to resume a stream)."""
        partial = partial_path(Path(path))
        if not partial.exists():
            raise FedtuneError(ErrorCode.NOT_FOUND, f"no partial file {partial} to resume")
        found, data_start = read_header(partial)
        if not found.same_layout(manifest):
            raise FedtuneError(ErrorCode.BAD_MANIFEST, f"{partial} was written for a different manifest")
        writer = cls.__new__(cls)
        writer.path, writer.manifest, writer.data_start = Path(path), manifest, data_start
        writer._hashes, writer._hashed_to, writer._digests = None, 0, None
        writer._starts, writer._element_starts = [0], [0]
        for t in manifest.tensors:
            writer._starts.append(writer._starts[-1] + t.nbytes)
            writer._element_starts.append(writer._element_starts[-1] + t.numel)
        writer._file = open(partial, "rb+")  # noqa: SIM115 - closed in commit/close
        return writer

    @property
    def partial_path(self) -> Path:
        return partial_path(self.path)

    def _open_file(self) -> BinaryIO:
        if self._file is None:
            raise FedtuneError(ErrorCode.WRONG_STATE, f"writer for {self.path} is already closed")
        return self._file

    def write_bytes(self, tensor_index: int, offset: int, data: bytes | memoryview) -> None:
        """Write raw bytes of tensor `tensor_index` starting `offset` bytes into that tensor."""
        f = self._open_file()
        if not 0 <= tensor_index < len(self.manifest.tensors):
            raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"tensor index {tensor_index} out of range")
        nbytes = self.manifest.tensors[tensor_index].nbytes
        if offset < 0 or offset + len(data) > nbytes:
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT,
                f"bytes [{offset}, {offset + len(data)}) overrun tensor {tensor_index} of {nbytes} bytes",
            )
        position = self._starts[tensor_index] + offset
        if self._hashes is not None:
            if position == self._hashed_to:
                self._hashes.update(data)  # on its threads; `data` must not change before commit
                self._hashed_to += len(data)
            else:
                self._hashes.close()
                self._hashes = None  # written out of order: the digests must be read back
        os.pwrite(f.fileno(), data, self.data_start + position)

    @property
    def written_digests(self) -> WrittenDigests | None:
        """The sha256s of the file and of its data section, when the writer was made with
        `digests=True` and every data byte was written exactly once, in order; else None."""
        if self._hashes is None or self._hashed_to != self._starts[-1]:
            return None
        if self._digests is None:
            file_digest, data_digest = self._hashes.hexdigests()
            self._digests = WrittenDigests(file=file_digest, data=data_digest)
        return self._digests

    def write_flat_float32(self, start_element: int, values: np.ndarray) -> None:
        """Write float32 values at flat element `start_element` (all tensors in manifest order, each
        narrowed to its own dtype); the slice may span several tensors."""
        flat = np.asarray(values, dtype=np.float32).reshape(-1)
        end_element = start_element + flat.size
        if start_element < 0 or end_element > self._element_starts[-1]:
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT,
                f"elements [{start_element}, {end_element}) outside the {self._element_starts[-1]} elements",
            )
        position = start_element
        while position < end_element:
            index = bisect.bisect_right(self._element_starts, position) - 1
            spec = self.manifest.tensors[index]
            stop = min(end_element, self._element_starts[index + 1])  # bisect_right skips empty tensors
            local = position - self._element_starts[index]
            raw = from_float32(flat[position - start_element : stop - start_element], spec.dtype)
            self.write_bytes(
                index, local * wire_dtype(spec.dtype).itemsize, raw.reshape(-1).view(np.uint8).data
            )
            position = stop

    def sync(self) -> None:
        """Make what was written so far durable (fsync)."""
        f = self._open_file()
        f.flush()
        os.fsync(f.fileno())

    def close(self) -> None:
        """Close the file, keeping ``<path>.partial`` (to resume later)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def commit(self) -> None:
        """fsync, atomically rename ``<path>.partial`` to `path`, fsync the directory."""
        self.sync()  # the hash threads finish their last pieces meanwhile
        self.written_digests  # noqa: B018 - waits for them and keeps the digests (or ends the threads)
        if self._hashes is not None:
            self._hashes.close()
        self.close()
        os.replace(self.partial_path, self.path)
        fsync_dir(self.path.parent)

    def discard(self) -> None:
        if self._hashes is not None:
            self._hashes.close()
            self._hashes = None
        self.close()
        self.partial_path.unlink(missing_ok=True)

    def __enter__(self) -> SafetensorsFileWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.discard()
        elif self._file is not None:
            self.commit()


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_safetensors(
    path: Path, arrays: Mapping[str, np.ndarray], dtypes: Mapping[str, str] | None = None
) -> Manifest:
    """Atomically write `arrays` (in mapping order) as a safetensors file; returns the manifest with digest.

    `dtypes` names a wire dtype per array where it differs from the numpy one: a uint16 array of
    bfloat16 bits is written as ``{"name": "bfloat16"}``.
    """
    dtypes = dtypes or {}
    manifest = Manifest.of([TensorSpec.for_array(n, a, dtypes.get(n)) for n, a in arrays.items()])
    raws = [storage_array(arrays[t.name], t.dtype) for t in manifest.tensors]
    sha = hashlib.sha256()
    with SafetensorsFileWriter(Path(path), manifest) as writer:
        for index, raw in enumerate(raws):
            data = raw.reshape(-1).view(np.uint8)
            for start in range(0, data.size, _READ_BYTES):
                piece = data[start : start + _READ_BYTES]
                sha.update(piece.data)
                writer.write_bytes(index, start, piece.tobytes())
    return Manifest(manifest.tensors, sha.hexdigest())


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """All tensors as raw storage arrays (bfloat16 stays uint16 bits; see `read_arrays_float32`)."""
    manifest, data_start = read_header(path)
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        f.seek(data_start)
        for t in manifest.tensors:
            buffer = bytearray(t.nbytes)
            f.readinto(buffer)
            out[t.name] = np.frombuffer(buffer, dtype=wire_dtype(t.dtype).storage).reshape(t.shape)
    return out


def read_arrays_float32(path: Path) -> dict[str, np.ndarray]:
    """All tensors widened to float32 (bfloat16 included)."""
    manifest, _ = read_header(path)
    dtypes = {t.name: t.dtype for t in manifest.tensors}
    return {name: to_float32(raw, dtypes[name]).reshape(raw.shape) for name, raw in read_arrays(path).items()}


def iter_float32(path: Path, chunk_elements: int = 262144) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (flat start element, float32 values) over all tensors in manifest order, reading piecewise.

    A piece holds at most `chunk_elements` values and never spans two tensors; empty tensors yield
    nothing. Each yielded array is fresh (safe to keep or modify).
    """
    if chunk_elements <= 0:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT, f"chunk_elements must be positive, got {chunk_elements}"
        )
    manifest, data_start = read_header(path)
    element = 0
    with open(path, "rb") as f:
        f.seek(data_start)
        for t in manifest.tensors:
            dt = wire_dtype(t.dtype)
            for start in range(0, t.numel, chunk_elements):
                count = min(chunk_elements, t.numel - start)
                buffer = bytearray(count * dt.itemsize)
                if f.readinto(buffer) != len(buffer):
                    raise _bad(Path(path), "file ends inside the data section")
                raw = np.frombuffer(buffer, dtype=dt.storage)
                yield element + start, to_float32(raw, t.dtype)
            element += t.numel


def iter_float32_views(path: Path, chunk_elements: int = 1 << 22) -> Iterator[tuple[int, np.ndarray]]:
    """Like `iter_float32`, without copying float32 tensors: each piece is a read-only view of a memory
    map of at most `chunk_elements` values, valid only until the next piece is asked for (keep a copy to
    keep it). Other dtypes are widened into a fresh array as in `iter_float32`. One piece is mapped at a
    time, so resident memory stays O(chunk) (decision 41)."""
    if chunk_elements <= 0:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT, f"chunk_elements must be positive, got {chunk_elements}"
        )
    manifest, data_start = read_header(path)
    element, position = 0, data_start
    with open(path, "rb") as f:
        for t in manifest.tensors:
            dt = wire_dtype(t.dtype)
            for start in range(0, t.numel, chunk_elements):
                count = min(chunk_elements, t.numel - start)
                offset = position + start * dt.itemsize
                base = offset - offset % mmap.ALLOCATIONGRANULARITY
                length = offset - base + count * dt.itemsize
                mapped = mmap.mmap(f.fileno(), length, _READ_FLAGS, mmap.PROT_READ, offset=base)
                try:
                    raw = np.frombuffer(mapped, dt.storage, count, offset - base)
                    yield element + start, raw if t.dtype == "float32" else to_float32(raw, t.dtype)
                    del raw
                finally:
                    with contextlib.suppress(BufferError):  # the caller still holds the view: GC unmaps
                        mapped.close()
            element += t.numel
            position += t.nbytes


def data_digest(path: Path) -> str:
    """sha256 hex of the data section (equals the manifest digest of the file's stream)."""
    _, data_start = read_header(path)
    sha = hashlib.sha256()
    buffer = bytearray(_READ_BYTES)
    view = memoryview(buffer)
    with open(path, "rb") as f:
        f.seek(data_start)
        while n := f.readinto(buffer):
            sha.update(view[:n])
    return sha.hexdigest()
