"""glibc's mmap threshold for the coordinator: above its stream chunks, so chunks reuse the heap, while
larger blocks (and the threshold itself) never stay resident by glibc's dynamic growth."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedtune import malloc
from fedtune.tensorstream.manifest import DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES

ROOT = Path(__file__).resolve().parents[2]

# 320 MB in 16 MB blocks after pinning the coordinator's threshold, then every other block freed:
# prints how many MB left the resident set.
LARGE_BLOCKS = """
import numpy as np
from fedtune.malloc import coordinator_mmap_threshold, return_freed_memory
def rss():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024
assert return_freed_memory(coordinator_mmap_threshold(4 << 20))
blocks = [np.ones(16 * 2**20 // 8) for _ in range(20)]
before = rss()
del blocks[::2]
print(round(before - rss()))
"""


def test_the_coordinator_threshold_is_above_every_chunk_size_it_may_stream() -> None:
    assert malloc.coordinator_mmap_threshold(DEFAULT_CHUNK_BYTES) == 8 << 20
    for chunk_bytes in (1024, 1 << 20, DEFAULT_CHUNK_BYTES, 8 << 20):
        assert malloc.coordinator_mmap_threshold(chunk_bytes) > chunk_bytes
    assert malloc.coordinator_mmap_threshold(MAX_CHUNK_BYTES) == malloc.MAX_MMAP_THRESHOLD_BYTES
    assert malloc.coordinator_mmap_threshold(1024) == malloc.MMAP_THRESHOLD_BYTES


@pytest.mark.skipif(malloc._glibc() is None, reason="glibc's malloc only")
def test_blocks_above_the_coordinator_threshold_still_leave_the_resident_set() -> None:
    out = subprocess.run(
        [sys.executable, "-c", LARGE_BLOCKS],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert int(out.stdout.strip()) >= 150
