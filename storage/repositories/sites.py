"""Sites: by id or name, and which of them have a live worker."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Site, Worker
from storage.states import WorkerState


class SiteRepository(ABC):
    @abstractmethod
    def add(self, site: Site) -> None: ...

    @abstractmethod
    def get(self, site_id: int) -> Site | None: ...

    @abstractmethod
    def by_name(self, name: str) -> Site | None:
        """The site called exactly `name`."""

    @abstractmethod
    def by_folded_name(self, name: str) -> Site | None:
        """The site whose name equals `name` ignoring case (older names may hold capitals)."""

    @abstractmethod
    def by_names(self, names: Sequence[str]) -> list[Site]: ...

    @abstractmethod
    def all(self) -> list[Site]:
        """Every site, by name."""

    def names(self) -> list[str]:
        return sorted(site.name for site in self.all())

    @abstractmethod
    def online_names(self, now: float, offline_after: float) -> list[str]:
        """Unrevoked sites with a live worker, in order of their oldest live worker's registration."""


class SqlSiteRepository(SiteRepository):
    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, site: Site) -> None:
        self._session.add(site)

    def get(self, site_id: int) -> Site | None:
        return self._session.get(Site, site_id)

    def by_name(self, name: str) -> Site | None:
        return self._session.scalars(select(Site).where(Site.name == name)).first()

    def by_folded_name(self, name: str) -> Site | None:
        return self._session.scalars(select(Site).where(func.lower(Site.name) == name.lower())).first()

    def by_names(self, names: Sequence[str]) -> list[Site]:
        return list(self._session.scalars(select(Site).where(Site.name.in_(list(names))).order_by(Site.name)))

    def all(self) -> list[Site]:
        return list(self._session.scalars(select(Site).order_by(Site.name)))

    def names(self) -> list[str]:
        return sorted(self._session.scalars(select(Site.name)))

    def online_names(self, now: float, offline_after: float) -> list[str]:
        rows = self._session.execute(
            select(Site.name, func.min(Worker.registered_at))
            .join(Worker, Worker.site_id == Site.id)
            .where(
                Worker.state == WorkerState.ONLINE,
                Worker.last_seen_at >= now - offline_after,
                Site.revoked_at.is_(None),
            )
            .group_by(Site.name)
            .order_by(func.min(Worker.registered_at), Site.name)
        ).all()
        return [name for name, _ in rows]
