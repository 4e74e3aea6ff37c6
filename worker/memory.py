"""The worker's memory: figures a task reports, and keeping freed memory from staying resident.

`worker_peak_rss_mb` is the process's high-water mark since it started (getrusage's ru_maxrss), so it
covers model loading in an earlier task too: it is what a site has to provision for its worker.
`gpu_peak_memory_mb` is torch's peak allocation during this task alone (the counter is reset at the
start).

Where a MiniLM worker's memory went (bench/worker_memory.py, docs/decisions.md 34): about 430 MB of
torch, transformers and peft code and the model; then one training step of 16 x 128 tokens keeps about
1.3 GB of activations for the backward pass (twelve 128 x 128 attention maps per layer and example,
in four copies around softmax and dropout, plus LoRA dropout's copy of each adapted layer's input). When
the step ends torch frees them, but glibc's malloc kept them resident: after a large block is freed it
raises its mmap threshold up to 32 MB, so every later activation comes from the heap, which is not
given back. `return_freed_memory` pins the threshold (what MALLOC_MMAP_THRESHOLD_ does), and the
daemon calls `trim` after each task.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

# Re-exported: the daemon pins the threshold at start and trims after each task (fedtune/malloc.py).
from fedtune.malloc import _glibc as _glibc
from fedtune.malloc import return_freed_memory as return_freed_memory
from fedtune.malloc import trim as trim

log = logging.getLogger("fedtune.worker")

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
    import torch

    figures = MemoryFigures()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    yield figures
    figures.values["worker_peak_rss_mb"] = round(peak_rss_mb(), 1)
    if cuda:
        figures.values["gpu_peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / MB, 1)
