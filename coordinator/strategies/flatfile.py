"""A flat numeric array kept in a raw file and touched chunk by chunk with pread/pwrite.

Accumulators live on disk so the coordinator's memory stays O(chunk) however large the model and
however many sites report. pread/pwrite (rather than a memory map) keep resident memory bounded:
the pages sit in the kernel's page cache, which the kernel can drop, and never in our RSS.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

import numpy as np


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
        os.ftruncate(fd, self.numel * self.dtype.itemsize)
        self._fd = fd
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
        """values[start:...] += scale * values, computed in the file's dtype."""
        current = self.read(start, np.asarray(values).size)
        if scale == 1.0:
            current += values
        else:
            current += np.multiply(values, scale, dtype=self.dtype)
        self.write(start, current)

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
