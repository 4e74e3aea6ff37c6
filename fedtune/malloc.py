"""glibc's malloc, told to give freed memory back: both sides hold large transient buffers (a worker's
activations, the coordinator's stream chunks and fold windows) that glibc would otherwise keep
resident after they are freed (docs/decisions.md 34 and 41).

After a large block is freed glibc raises its mmap threshold (up to 32 MiB), so every later block of
that size comes from the heap, which is not given back. `return_freed_memory` pins the threshold (what
MALLOC_MMAP_THRESHOLD_ does, which a site may set itself: then it is left alone); `trim` hands the
heap's free pages back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger("fedtune.malloc")

# Blocks from this size up are mmapped and unmapped when freed (glibc's default starts at 128 KiB and
# grows to 32 MiB as large blocks are freed, which keeps freed buffers resident).
MMAP_THRESHOLD_BYTES = 64 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt parameter number, glibc's malloc.h
_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"  # set by the operator: glibc reads it and we leave it alone


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def return_freed_memory() -> bool:
    """Pin glibc's mmap threshold so freed buffers leave the resident set; False where not glibc or
    where MALLOC_MMAP_THRESHOLD_ is set already."""
    libc = _glibc()
    if libc is None or _THRESHOLD_ENV in os.environ:
        return False
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    if ok:
        log.info(
            "malloc: blocks of %d KiB and more are returned to the system when freed",
            MMAP_THRESHOLD_BYTES // 1024,
        )
    return ok


def trim() -> None:
    """Give the heap's free pages back to the system (glibc's malloc_trim)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
