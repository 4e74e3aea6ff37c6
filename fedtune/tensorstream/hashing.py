"""sha256s computed on threads of their own while the caller goes on (hashlib releases the GIL).

A writer that knows its file's digests as it writes (``SafetensorsFileWriter(digests=True)``) would
otherwise spend two sha256 passes over a 256 MiB version on the commit's critical path (decision 41).
Each hasher has one thread, so its pieces are hashed in the order given; at most `MAX_QUEUED` pieces
wait per hasher, so memory stays O(chunk).
"""

from __future__ import annotations

import hashlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

MAX_QUEUED = 2


class BackgroundHashes:
    """One sha256 per prefix (``b""`` for none), each fed every `update`, in order, on its own thread.

    A piece given to `update` must not change until `hexdigests` or `close` returns."""

    def __init__(self, *prefixes: bytes) -> None:
        self._hashers = [hashlib.sha256(prefix) for prefix in prefixes]
        self._threads = [ThreadPoolExecutor(1, thread_name_prefix="fedtune-hash") for _ in prefixes]
        self._queued: deque[Future[None]] = deque()

    def update(self, data: bytes | memoryview) -> None:
        while len(self._queued) >= MAX_QUEUED * len(self._hashers):
            self._queued.popleft().result()
        for hasher, thread in zip(self._hashers, self._threads, strict=True):
            self._queued.append(thread.submit(hasher.update, data))

    def hexdigests(self) -> list[str]:
        """Wait for every piece, then the digests (in the order of the prefixes); closes the threads."""
        self.close()
        return [hasher.hexdigest() for hasher in self._hashers]

    def close(self) -> None:
        """Finish the queued pieces and end the threads (idempotent)."""
        while self._queued:
            self._queued.popleft().result()
        for thread in self._threads:
            thread.shutdown(wait=True)
