"""The worker's memory: freed tensors leave the resident set, and tasks report the peak."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from worker import memory

ROOT = Path(__file__).resolve().parents[2]
# 200 MB in 2 MB blocks after a freed 16 MB block (which raises glibc's dynamic mmap threshold), then
# every other block freed: prints how many MB left the resident set.
INTERLEAVED = """
import sys
import numpy as np
from worker.memory import return_freed_memory
def rss():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024
if sys.argv[1] == "pinned":
    assert return_freed_memory()
warm = np.ones(16 * 2**20 // 8)
del warm
blocks = [np.ones(2**21 // 8) for _ in range(100)]
before = rss()
del blocks[::2]
print(round(before - rss()))
"""


def _freed_mb(mode: str) -> int:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", INTERLEAVED, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(memory._glibc() is None, reason="glibc's malloc only")
def test_freed_tensors_leave_the_resident_set_once_the_threshold_is_pinned() -> None:
    # Execute
    default, pinned = _freed_mb("default"), _freed_mb("pinned")
    # Assert: glibc's default keeps the freed half resident; pinned, it goes back to the system
    assert default < 20
    assert pinned >= 90


def test_a_site_that_sets_the_threshold_itself_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert memory.return_freed_memory() is False


def test_peak_rss_is_reported_in_megabytes() -> None:
    with memory.peak_rss() as figures:
        pass
    assert 20 < figures.metrics()["worker_peak_rss_mb"] < 100_000
