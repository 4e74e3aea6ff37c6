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
# grows to 32 MiB as large blocks are freed, which keeps freed buffers resident). A worker's training
# activations are many mid-sized blocks: 64 KiB gives them back (decision 34).
MMAP_THRESHOLD_BYTES = 64 * 1024
# glibc accepts a pinned threshold up to 32 MiB on 64-bit systems.
MAX_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
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


def return_freed_memory(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Pin glibc's mmap threshold at `threshold_bytes` so freed buffers of that size and more leave the
    resident set; False where not glibc or where MALLOC_MMAP_THRESHOLD_ is set already."""
    libc = _glibc()
    if libc is None or _THRESHOLD_ENV in os.environ:
        return False
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold_bytes))
    if ok:
        log.info(
            "malloc: blocks of %d KiB and more are returned to the system when freed",
            threshold_bytes // 1024,
        )
    return ok


def coordinator_mmap_threshold(chunk_bytes: int) -> int:
    """The coordinator's threshold: twice its stream chunk size (8 MiB for 4 MiB chunks), within glibc's cap.

    Its large transient blocks are stream chunks (plus framing) and fold windows. Below the chunk size
    every chunk would be a fresh mmap, page-faulted in and unmapped again: measured at 8 sites x 256 MiB
    on an idle machine, 41 s of coordinator CPU per round at 64 KiB against 25 s at 8 MiB, for 370
    against 500 MiB of peak RSS (decision 43). Pinned, it still never grows to 32 MiB by itself.
    """
    return max(MMAP_THRESHOLD_BYTES, min(2 * chunk_bytes, MAX_MMAP_THRESHOLD_BYTES))


def trim() -> None:
    """Give the heap's free pages back to the system (glibc's malloc_trim)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
