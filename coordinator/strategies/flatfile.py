"""A flat numeric array kept in a raw file and touched chunk by chunk.

Accumulators live on disk so the coordinator's memory stays O(chunk) however large the model and
however many sites report. Reads and writes go through pread/pwrite; `add`, the hot path of a fold,
maps one window of the file at a time (at most `WINDOW_BYTES`, unmapped before the next), so the
kernel's page cache is updated in place without the two copies pread + pwrite cost, and resident
memory stays bounded by the window (decision 41). The file's blocks are reserved when it is created
(`posix_fallocate`), so a full disk is an OSError there, never a SIGBUS on a mapped page.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np

WINDOW_BYTES = 32 << 20  # the most bytes of the file mapped at once by `add`
BLOCK_ELEMENTS = 1 << 15  # numpy works block by block so that its temporaries stay in the CPU cache


class FlatFile:
    """`numel` values of `dtype` in `path`; create() makes them all zero (a sparse file)."""

    def __init__(self, path: Path, numel: int, dtype: np.dtype | type = np.float64) -> None:
        self.path = Path(path)
        self.numel = numel
        self.dtype = np.dtype(dtype)
        self._fd: int | None = None

    def create(self) -> FlatFile:
        """Replace any existing file by `numel` zeros."""
        self.close()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._fd = fd
        nbytes = self.numel * self.dtype.itemsize
        os.ftruncate(fd, nbytes)
        if nbytes:
            with contextlib.suppress(AttributeError):  # no posix_fallocate (not Linux): a sparse file
                os.posix_fallocate(fd, 0, nbytes)  # ENOSPC now, not SIGBUS on a mapped page later
        return self

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR)
        return self._fd

    def _check(self, start: int, count: int) -> None:
        if start < 0 or count < 0 or start + count > self.numel:
            raise IndexError(f"[{start}, {start + count}) outside {self.path.name} of {self.numel} values")

    def read(self, start: int, count: int) -> np.ndarray:
        """A fresh writable array of the values [start, start + count)."""
        self._check(start, count)
        nbytes = count * self.dtype.itemsize
        buffer = bytearray(nbytes)
        view = memoryview(buffer)
        offset, done = start * self.dtype.itemsize, 0
        fd = self._open()
        while done < nbytes:
            got = os.preadv(fd, [view[done:]], offset + done)
            if got == 0:
                raise OSError(f"{self.path} is shorter than expected")
            done += got
        return np.frombuffer(buffer, dtype=self.dtype)

    def write(self, start: int, values: np.ndarray) -> None:
        data = np.ascontiguousarray(values, dtype=self.dtype).reshape(-1)
        self._check(start, data.size)
        view = data.data.cast("B")
        offset, done = start * self.dtype.itemsize, 0
        fd = self._open()
        while done < len(view):
            done += os.pwrite(fd, view[done:], offset + done)

    def add(self, start: int, values: np.ndarray, scale: float = 1.0) -> None:
        """self[start:start + len(values)] += scale * values, computed in the file's dtype."""
        self.add_many(start, [(values, scale)])

    def add_many(self, start: int, terms: Sequence[tuple[np.ndarray, float]]) -> None:
        """self[start:start + n] += scale * values for each (values, scale) of `terms` (n values each), in
        that order: the same float sums, bit for bit, as one `add` per term, in one pass over the file.

        Each element is rounded once by each product (in the file's dtype) and once by each sum, exactly
        as ``current + np.multiply(values, scale, dtype)`` term after term, whatever the window and block
        sizes. A block of the file stays in the CPU cache while every term is added to it, so k terms
        cost one read and one write of the file instead of k (decision 41)."""
        flats = [(np.asarray(values).reshape(-1), float(scale)) for values, scale in terms]
        if not flats:
            return
        size = flats[0][0].size
        if any(values.size != size for values, _ in flats):
            raise ValueError("add_many: every term must have the same number of values")
        self._check(start, size)
        fd = self._open()
        itemsize = self.dtype.itemsize
        window = max(1, WINDOW_BYTES // itemsize)
        scratch = np.empty(min(BLOCK_ELEMENTS, max(size, 1)), self.dtype)
        for first in range(0, size, window):
            count = min(window, size - first)
            offset = (start + first) * itemsize
            base = offset - offset % mmap.ALLOCATIONGRANULARITY
            mapped = mmap.mmap(fd, offset - base + count * itemsize, offset=base)
            try:
                pieces = [(values[first : first + count], scale) for values, scale in flats]
                _add_blocks(mapped, offset - base, count, pieces, scratch)
            finally:
                with contextlib.suppress(BufferError):  # an error's traceback may still hold a view
                    mapped.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def unlink(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> FlatFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _add_blocks(
    mapped: mmap.mmap,
    offset: int,
    count: int,
    terms: list[tuple[np.ndarray, float]],
    scratch: np.ndarray,
) -> None:
    """mapped[offset:] += scale * values per term, block by block (each product lands in `scratch`)."""
    target = np.frombuffer(mapped, scratch.dtype, count, offset)
    for first in range(0, count, scratch.size):
        block = target[first : first + scratch.size]
        product = scratch[: block.size]
        for values, scale in terms:
            piece = values[first : first + block.size]
            if scale == 1.0:
                np.add(block, piece, out=block)
            else:  # widen, then scale in place: faster than numpy's buffered casting inside multiply
                np.copyto(product, piece, casting="same_kind")
                np.multiply(product, scale, out=product)  # rounded in the file's dtype
                np.add(block, product, out=block)
