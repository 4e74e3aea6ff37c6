"""Memory figures a task reports: the worker process's peak resident set, and on CUDA the task's peak
GPU memory.

`worker_peak_rss_mb` is the process's high-water mark since it started (getrusage's ru_maxrss), so it
covers model loading in an earlier task too: it is what a site has to provision for its worker.
`gpu_peak_memory_mb` is torch's peak allocation during this task alone (the counter is reset at the
start).
"""

from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

MB = 1024 * 1024


def peak_rss_mb() -> float:
    """The process's peak resident set size in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024


@dataclass
class MemoryFigures:
    values: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        return dict(self.values)


@contextlib.contextmanager
def peak_rss() -> Iterator[MemoryFigures]:
    """Measure a task's block; the figures are filled in when it ends without an error."""
    figures = MemoryFigures()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    yield figures
    figures.values["worker_peak_rss_mb"] = round(peak_rss_mb(), 1)
    if cuda:
        figures.values["gpu_peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / MB, 1)
