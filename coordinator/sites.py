"""The sites' lifecycle: add (a token shown once), rotate the token, revoke, list, seed from settings.

Only a token's sha256 is stored (``coordinator/auth.py`` checks it). A revoked site keeps its row (its
name is never reused) and its past updates; its live tasks fail or are cancelled (decision 27).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from coordinator import lifecycle
from coordinator.auth import hash_token
from coordinator.clock import Clock, SystemClock
from fedtune import identity
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.serde import SiteRecord
from storage import models
from storage.registry import record_event
from storage.states import TaskState, WorkerState
from storage.uow import UnitOfWork, UowFactory

log = logging.getLogger("fedtune.coordinator.sites")


@dataclass(frozen=True)
class Revocation:
    site: SiteRecord
    tasks_failed: int
    tasks_cancelled: int


def _nobody(_site: str) -> None:
    pass


class SiteService:
    def __init__(
        self, uow_factory: UowFactory, clock: Clock | None = None, on_change: Callable[[str], None] = _nobody
    ) -> None:
        self._uow_factory = uow_factory
        self._clock = clock or SystemClock()
        self._on_change = on_change  # told the name of a site whose token or revocation changed

    def _find(self, uow: UnitOfWork, name: str) -> models.Site | None:
        """The site named `name`, compared case-insensitively (older names may hold capitals)."""
        return uow.sites.by_folded_name(name)

    def _get(self, uow: UnitOfWork, name: str) -> models.Site:
        row = uow.sites.by_name(name)
        if row is None:
            raise FedtuneError(ErrorCode.NOT_FOUND, f"no site {name!r} (`fedtune admin sites list`)")
        return row

    def add_site(self, name: str) -> str:
        """Create a site and return its token (shown once; only the hash is kept)."""
        name = identity.check_site_name(name.strip())
        token = secrets.token_urlsafe(32)
        with self._uow_factory() as uow:
            exists = self._find(uow, name)
            if exists is not None:
                revoked = (
                    " (revoked: a revoked name is not reused, choose another)" if exists.revoked_at else ""
                )
                raise FedtuneError(
                    ErrorCode.ALREADY_EXISTS,
                    f"site {exists.name!r} already exists{revoked}; names are compared case-insensitively",
                )
            uow.sites.add(models.Site(name=name, token_hash=hash_token(token)))
            record_event(uow, "site.added", f"site {name} added", data={"site": name})
            uow.commit()
        return token

    def rotate_token(self, name: str) -> str:
        """A new token for site `name`, returned once; the old token stops working at once."""
        token = secrets.token_urlsafe(32)
        with self._uow_factory() as uow:
            row = self._get(uow, name)
            if row.revoked_at is not None:
                raise FedtuneError(
                    ErrorCode.WRONG_STATE, f"site {name!r} is revoked; a revoked site gets no new token"
                )
            row.token_hash = hash_token(token)
            record_event(uow, "site.token_rotated", f"token of site {name} rotated", data={"site": name})
            uow.commit()
        self._on_change(row.name)
        log.info("site token rotated", extra={"site": name})
        return token

    def revoke_site(self, name: str, reason: str = "") -> Revocation:
        """Site `name` can no longer authenticate. Its live round tasks fail (so their rounds close with
        the other sites), its pending init tasks are cancelled (the scheduler picks another site) and
        its workers go offline. Updates it sent before stay in their rounds."""
        now = self._clock.now()
        with self._uow_factory() as uow:
            row = self._get(uow, name)
            if row.revoked_at is not None:
                raise FedtuneError(ErrorCode.WRONG_STATE, f"site {name!r} is already revoked")
            row.revoked_at = now
            failed = cancelled = 0
            error = f"site {name} was revoked" + (f": {reason}" if reason else "")
            for task in uow.tasks.live_for_site(row.id):
                if task.round_id is None:
                    lifecycle.cancel_task(uow, task, now)
                    cancelled += 1
                else:
                    lifecycle.end_task(uow, task, TaskState.FAILED, now, error=error)
                    failed += 1
            for worker in uow.workers.for_site(row.id):
                worker.current_task_id = None
                if worker.state != WorkerState.OFFLINE:
                    lifecycle.worker_offline(uow, worker, f"worker {worker.id} offline: site {name} revoked")
            record_event(
                uow,
                "site.revoked",
                f"site {name} revoked" + (f": {reason}" if reason else ""),
                data={"site": name, "reason": reason, "tasks_failed": failed, "tasks_cancelled": cancelled},
            )
            uow.commit()
            record = SiteRecord(name=row.name, created_unix=row.created_at, revoked_unix=now)
        self._on_change(record.name)
        log.warning("site revoked", extra={"site": name, "failed": failed, "cancelled": cancelled})
        return Revocation(record, failed, cancelled)

    def list_sites(self) -> list[SiteRecord]:
        with self._uow_factory() as uow:
            workers = uow.workers.site_summaries()
            return [
                SiteRecord(
                    name=row.name,
                    created_unix=row.created_at,
                    revoked_unix=row.revoked_at or 0.0,
                    workers_online=workers.get(row.id, (0, 0.0))[0],
                    last_seen_unix=workers.get(row.id, (0, 0.0))[1],
                )
                for row in uow.sites.all()
            ]

    def seed_sites(self, sites: Mapping[str, str]) -> None:
        """Create or re-key the sites the settings name (compose installs); a revoked one stays revoked."""
        with self._uow_factory() as uow:
            for name, token in sites.items():
                row = self._find(uow, identity.check_site_name(name))
                if row is None:
                    uow.sites.add(models.Site(name=name, token_hash=hash_token(token)))
                elif row.revoked_at is not None:
                    log.warning("seeded site is revoked; it stays revoked", extra={"site": row.name})
                else:
                    row.token_hash = hash_token(token)
            uow.commit()
        for name in sites:
            self._on_change(name)
        if sites:
            log.info("seeded sites from settings", extra={"sites": sorted(sites)})
