"""StreamDecoder: checks a chunk stream against its manifest and writes it to a safetensors file.

Chunks must arrive in stream order. Until `finish` succeeds only ``<out>.partial`` (the file being
written) and ``<out>.progress`` (a tiny JSON sidecar: how many bytes are durably in the partial)
exist; `finish` verifies completeness and the sha256, then renames the partial to ``<out>``.
A stream that broke off can be continued with `StreamDecoder.resume` from the sidecar's position
(which never claims bytes that were not fsynced first).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.dtypes import finite_max_abs_raw, wire_dtype
from fedtune.tensorstream.manifest import MAX_CHUNK_BYTES, Chunk, Manifest
from fedtune.tensorstream.safetensors_file import SafetensorsFileWriter, partial_path, read_header

# fsync + update the progress sidecar after this many new bytes. Each checkpoint waits for the disk, so
# it is a resume granularity traded against throughput: at 8 MiB a 256 MiB upload waited 32 times
# (decision 41); a broken stream now re-sends at most 64 MiB.
DEFAULT_SYNC_EVERY_BYTES = 64 << 20
_DIGEST = re.compile(r"[0-9a-f]{64}")
_READ_BYTES = 1 << 20
# What `resume` raises when the partial on disk cannot continue (missing, cut short, another layout).
_CANNOT_RESUME = (ErrorCode.NOT_FOUND, ErrorCode.BAD_MANIFEST, ErrorCode.STORAGE)


def progress_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".progress")


class StreamDecoder:
    _writer: SafetensorsFileWriter | None

    def __init__(
        self,
        manifest: Manifest,
        out_path: Path,
        *,
        max_chunk_bytes: int = MAX_CHUNK_BYTES,
        check_finite: bool = True,
        sync_every_bytes: int = DEFAULT_SYNC_EVERY_BYTES,
        max_abs_value: float | None = None,
    ) -> None:
        """Start a fresh stream into ``<out_path>.partial`` (replacing any earlier partial upload).

        With `max_abs_value`, a chunk holding a value of larger magnitude is refused (NON_FINITE)."""
        self._setup(manifest, out_path, max_chunk_bytes, check_finite, sync_every_bytes, max_abs_value)
        progress_path(self.out_path).unlink(missing_ok=True)  # never trust a stale sidecar
        writer = SafetensorsFileWriter(self.out_path, manifest)
        writer.sync()
        self._writer = writer
        self._write_progress()

    def _setup(
        self,
        manifest: Manifest,
        out_path: Path,
        max_chunk_bytes: int,
        check_finite: bool,
        sync_every_bytes: int,
        max_abs_value: float | None = None,
    ) -> None:
        manifest.validate()
        if not _DIGEST.fullmatch(manifest.digest):
            raise FedtuneError(
                ErrorCode.BAD_MANIFEST, "the manifest needs its digest (64 lowercase hex chars of sha256)"
            )
        if max_chunk_bytes <= 0:
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT, f"max_chunk_bytes must be positive: {max_chunk_bytes}"
            )
        self.manifest = manifest
        self.out_path = Path(out_path)
        self.max_chunk_bytes = max_chunk_bytes
        self.check_finite = check_finite
        self.max_abs_value = max_abs_value
        self.sync_every_bytes = sync_every_bytes
        self._starts = [0]
        for t in manifest.tensors:
            self._starts.append(self._starts[-1] + t.nbytes)
        self._sha = hashlib.sha256()
        self._received = 0
        self._synced = 0
        self._writer = None

    # ----------------------------------------------------------------- resume
    @classmethod
    def resume(
        cls,
        manifest: Manifest,
        out_path: Path,
        *,
        max_chunk_bytes: int = MAX_CHUNK_BYTES,
        check_finite: bool = True,
        sync_every_bytes: int = DEFAULT_SYNC_EVERY_BYTES,
        max_abs_value: float | None = None,
    ) -> StreamDecoder:
        """Reopen ``<out_path>.partial`` at the position its progress sidecar records (0 without one),
        re-hashing the bytes already received.

        NOT_FOUND when there is no partial file; BAD_MANIFEST when it was written for another manifest.
        """
        decoder = cls.__new__(cls)
        decoder._setup(manifest, out_path, max_chunk_bytes, check_finite, sync_every_bytes, max_abs_value)
        writer = SafetensorsFileWriter.reopen(decoder.out_path, manifest)
        decoder._writer = writer
        try:
            decoder._received = decoder._synced = _read_received(decoder.out_path, manifest)
            decoder._rehash()
        except BaseException:
            writer.close()
            raise
        return decoder

    @classmethod
    def resume_or_restart(
        cls, manifest: Manifest, out_path: Path, **options: Any
    ) -> tuple[StreamDecoder, bool]:
        """`resume` when the partial on disk can continue, else a fresh stream from byte 0; `options`
        are those of the constructor.

        Returns (decoder, restarted). A crash can leave a sidecar without its partial, a partial shorter
        than its header says, or a partial of another manifest; all of those restart (replacing them).
        """
        try:
            return cls.resume(manifest, out_path, **options), False
        except FedtuneError as err:
            if err.code not in _CANNOT_RESUME:
                raise
        return cls(manifest, out_path, **options), True

    @staticmethod
    def peek_progress(out_path: Path) -> tuple[int, int] | None:
        """The (tensor index, byte offset) a resumed stream continues from, or None when nothing can be
        resumed: no sidecar, or its partial file is missing, cut short or does not hold what the sidecar
        claims (what a crash can leave). So a position returned here is one `resume` accepts."""
        out_path = Path(out_path)
        try:
            data = json.loads(progress_path(out_path).read_text())
            position = int(data["next_tensor"]), int(data["next_offset"])
            received = int(data["received_bytes"])
            layout, _ = read_header(partial_path(out_path))
        except (OSError, ValueError, KeyError, TypeError, FedtuneError):
            return None
        starts = [0]
        for t in layout.tensors:
            starts.append(starts[-1] + t.nbytes)
        if not 0 <= received <= starts[-1]:
            return None
        index = bisect.bisect_right(starts, received) - 1
        expected = (
            (len(layout.tensors), 0) if index >= len(layout.tensors) else (index, received - starts[index])
        )
        return position if position == expected else None

    def _rehash(self) -> None:
        partial = partial_path(self.out_path)
        with open(partial, "rb") as f:
            f.seek(self._writer_open().data_start)
            remaining = self._received
            while remaining:
                data = f.read(min(_READ_BYTES, remaining))
                if not data:
                    raise FedtuneError(ErrorCode.STORAGE, f"{partial} is shorter than its progress says")
                self._sha.update(data)
                remaining -= len(data)

    # ----------------------------------------------------------------- state
    @property
    def next_position(self) -> tuple[int, int]:
        """(tensor index, byte offset) of the next expected chunk; (len(tensors), 0) when complete."""
        return self._position_of(self._received)

    def _position_of(self, stream_bytes: int) -> tuple[int, int]:
        index = bisect.bisect_right(self._starts, stream_bytes) - 1  # skips empty tensors
        if index >= len(self.manifest.tensors):
            return len(self.manifest.tensors), 0
        return index, stream_bytes - self._starts[index]

    @property
    def received_bytes(self) -> int:
        return self._received

    @property
    def complete(self) -> bool:
        return self._received == self._starts[-1]

    def rewind_to(self, tensor_index: int, offset: int) -> None:
        """Continue from an earlier position than the one recorded.

        A client that resumes from a status it read while its broken stream was still being received
        re-sends bytes this decoder already holds; they are identical, so the stream continues from
        the client's position (the running sha256 is recomputed over the shorter prefix). A position
        after the recorded one would leave a gap: BAD_CHUNK.
        """
        tensors = self.manifest.tensors
        if not 0 <= tensor_index <= len(tensors) or offset < 0:
            raise FedtuneError(ErrorCode.BAD_CHUNK, f"no position ({tensor_index}, {offset}) in this stream")
        target = self._starts[tensor_index] + offset
        if tensor_index < len(tensors) and offset > tensors[tensor_index].nbytes:
            raise FedtuneError(
                ErrorCode.BAD_CHUNK, f"offset {offset} is past the end of tensor {tensor_index}"
            )
        if target > self._received:
            expected = self.next_position
            raise FedtuneError(
                ErrorCode.BAD_CHUNK,
                f"resuming at tensor {tensor_index} offset {offset} would skip bytes: "
                f"this stream continues at tensor {expected[0]} offset {expected[1]}",
            )
        if target == self._received:
            return
        self._writer_open()
        self._received = target
        self._synced = min(self._synced, target)
        self._sha = hashlib.sha256()
        self._rehash()

    def _writer_open(self) -> SafetensorsFileWriter:
        if self._writer is None:
            raise FedtuneError(ErrorCode.WRONG_STATE, f"the stream for {self.out_path} is already closed")
        return self._writer

    # ----------------------------------------------------------------- chunks
    def add(self, chunk: Chunk) -> None:
        """Verify `chunk` and write it; a rejected chunk writes nothing and leaves the stream as it was."""
        writer = self._writer_open()
        size = len(chunk.data)
        if size > self.max_chunk_bytes:
            raise FedtuneError(ErrorCode.TOO_LARGE, f"chunk of {size} bytes exceeds {self.max_chunk_bytes}")
        count = len(self.manifest.tensors)
        if not 0 <= chunk.tensor_index < count:
            raise FedtuneError(ErrorCode.BAD_CHUNK, f"tensor index {chunk.tensor_index} outside [0, {count})")
        spec = self.manifest.tensors[chunk.tensor_index]
        itemsize = wire_dtype(spec.dtype).itemsize
        if chunk.offset < 0 or chunk.offset + size > spec.nbytes:
            raise FedtuneError(
                ErrorCode.BAD_CHUNK,
                f"bytes [{chunk.offset}, {chunk.offset + size}) overrun tensor {spec.name!r} "
                f"({spec.nbytes} bytes)",
            )
        if size == 0 or chunk.offset % itemsize or size % itemsize:
            raise FedtuneError(
                ErrorCode.BAD_CHUNK,
                f"chunk at offset {chunk.offset} with {size} bytes is empty or not aligned to "
                f"{spec.dtype}'s {itemsize}-byte items",
            )
        expected = self.next_position
        if (chunk.tensor_index, chunk.offset) != expected:
            kind = "duplicated" if (chunk.tensor_index, chunk.offset) < expected else "out-of-order"
            raise FedtuneError(
                ErrorCode.BAD_CHUNK,
                f"{kind} chunk at tensor {chunk.tensor_index} offset {chunk.offset}; "
                f"expected tensor {expected[0]} offset {expected[1]}",
            )
        if zlib.crc32(chunk.data) != chunk.crc32:
            raise FedtuneError(
                ErrorCode.CHECKSUM_MISMATCH,
                f"crc32 mismatch in tensor {spec.name!r} at offset {chunk.offset}",
            )
        if self.check_finite or self.max_abs_value is not None:
            self._check_values(spec.name, spec.dtype, chunk)
        writer.write_bytes(chunk.tensor_index, chunk.offset, chunk.data)
        self._sha.update(chunk.data)
        self._received += size
        if self._received - self._synced >= self.sync_every_bytes:
            self.checkpoint()

    def _check_values(self, name: str, dtype: str, chunk: Chunk) -> None:
        """NaN / Inf, and values beyond `max_abs_value`, in one chunk (O(chunk) memory)."""
        raw = np.frombuffer(chunk.data, wire_dtype(dtype).storage)
        largest = finite_max_abs_raw(raw, dtype)  # max_abs_value implies finite
        if largest is None:
            raise FedtuneError(
                ErrorCode.NON_FINITE, f"tensor {name!r} has NaN or Inf near byte offset {chunk.offset}"
            )
        if self.max_abs_value is not None:
            if largest > self.max_abs_value:
                raise FedtuneError(
                    ErrorCode.NON_FINITE,
                    f"tensor {name!r} has a value of magnitude {largest:g} near byte offset {chunk.offset}; "
                    f"the limit is {self.max_abs_value:g} (the coordinator's max_update_abs_value)",
                )

    def checkpoint(self) -> None:
        """fsync the partial file, then record its progress in the sidecar (what `resume` continues from)."""
        self._writer_open().sync()
        self._synced = self._received
        self._write_progress()

    def _write_progress(self) -> None:
        index, offset = self._position_of(self._synced)
        record = {
            "digest": self.manifest.digest,
            "next_tensor": index,
            "next_offset": offset,
            "received_bytes": self._synced,
        }
        sidecar = progress_path(self.out_path)
        tmp = sidecar.with_name(sidecar.name + ".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, sidecar)

    # ----------------------------------------------------------------- end
    def finish(self) -> str:
        """Verify every byte arrived and the sha256 matches, then commit to `out_path`; returns the digest.

        On failure (INCOMPLETE_STREAM / CHECKSUM_MISMATCH) the partial file is removed.
        """
        writer = self._writer_open()
        if not self.complete:
            index, offset = self.next_position
            name = self.manifest.tensors[index].name
            self.abort()
            raise FedtuneError(
                ErrorCode.INCOMPLETE_STREAM,
                f"stream ended early: tensor {name!r} (index {index}) is missing from byte {offset}",
            )
        digest = self._sha.hexdigest()
        if digest != self.manifest.digest:
            self.abort()
            raise FedtuneError(
                ErrorCode.CHECKSUM_MISMATCH,
                f"sha256 of the received tensors {digest} differs from the manifest's {self.manifest.digest}",
            )
        writer.commit()
        self._writer = None
        progress_path(self.out_path).unlink(missing_ok=True)
        return digest

    def close(self) -> None:
        """Stop without finishing, keeping the partial file and sidecar so the stream can be resumed."""
        if self._writer is not None:
            self.checkpoint()
            self._writer.close()
            self._writer = None

    def abort(self) -> None:
        """Remove the partial file and the sidecar."""
        if self._writer is not None:
            self._writer.discard()
            self._writer = None
        partial_path(self.out_path).unlink(missing_ok=True)
        progress_path(self.out_path).unlink(missing_ok=True)


def _read_received(out_path: Path, manifest: Manifest) -> int:
    """Bytes the sidecar says are durably in the partial file (0 without a usable sidecar)."""
    try:
        data = json.loads(progress_path(out_path).read_text())
        received = int(data["received_bytes"])
        digest = str(data["digest"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    if digest != manifest.digest:
        raise FedtuneError(
            ErrorCode.BAD_MANIFEST,
            f"the partial upload at {out_path} belongs to another manifest (digest differs)",
        )
    if not 0 <= received <= manifest.total_bytes:
        return 0
    return received
