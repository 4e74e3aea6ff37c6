"""Per-site limits on concurrent calls, so that no site can hold more than its share of the server.

A call over its site's limit is refused at once with BUSY (RESOURCE_EXHAUSTED, message prefix
``busy:``), which a worker retries with backoff; it never queues behind another site's calls.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping

from fedtune.errors import ErrorCode, FedtuneError

PULL = "PullTask"
UPLOAD = "PushUpdate"
DOWNLOAD = "FetchTensors"


class SiteCallLimits:
    """Counts each site's open calls per kind against `per_site`; `totals` caps a kind over all sites."""

    def __init__(self, per_site: Mapping[str, int], totals: Mapping[str, int] | None = None) -> None:
        self._per_site = dict(per_site)
        self._totals = dict(totals or {})
        self._open: dict[tuple[int, str], int] = {}
        self._open_by_kind: dict[str, int] = {}
        self._lock = threading.Lock()

    def open_calls(self, kind: str, site_id: int | None = None) -> int:
        with self._lock:
            if site_id is None:
                return self._open_by_kind.get(kind, 0)
            return self._open.get((site_id, kind), 0)

    @contextlib.contextmanager
    def hold(self, site_id: int, site: str, kind: str) -> Iterator[None]:
        """Count one open `kind` call of the site for the duration of the block; BUSY over a limit."""
        key = (site_id, kind)
        with self._lock:
            limit = self._per_site[kind]
            if self._open.get(key, 0) >= limit:
                raise FedtuneError(
                    ErrorCode.BUSY,
                    f"site {site!r} already has {limit} open {kind} calls (the per-site limit); "
                    "end one (or wait for it to end) and retry with backoff",
                )
            total = self._totals.get(kind)
            if total is not None and self._open_by_kind.get(kind, 0) >= total:
                raise FedtuneError(
                    ErrorCode.BUSY,
                    f"the coordinator has {total} open {kind} calls (its limit); retry with backoff",
                )
            self._open[key] = self._open.get(key, 0) + 1
            self._open_by_kind[kind] = self._open_by_kind.get(kind, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._open[key] -= 1
                if not self._open[key]:
                    del self._open[key]
                self._open_by_kind[kind] -= 1
