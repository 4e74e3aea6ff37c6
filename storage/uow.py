"""Unit of work: every change to the registry happens inside ``with uow:`` ... ``uow.commit()``.

Leaving the block without ``commit()`` (or with an exception) rolls back. Nothing opens a
session at import time; ``SqlUnitOfWork`` takes a session factory from ``storage.db``.

A unit of work carries the repositories (``uow.tasks``, ``uow.rounds`` ...: the registry's named
queries, ``storage.repositories``) and collects *wake-ups*: who should hear of the change once it is
committed (``uow.wake(sites=[...])``: those sites may have a new leasable task; ``all_sites=True``:
every site may). ``commit()`` hands them to the factory's ``after_commit`` hook (the coordinator's
notifier); a rollback drops them, so nobody is woken for a change that did not happen.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from storage.repositories import (
    EventRepository,
    ExperimentRepository,
    RoundRepository,
    SecAggRepository,
    SiteRepository,
    SqlEventRepository,
    SqlExperimentRepository,
    SqlRoundRepository,
    SqlSecAggRepository,
    SqlSiteRepository,
    SqlStageRepository,
    SqlTaskRepository,
    SqlUpdateRepository,
    SqlVersionRepository,
    SqlWorkerRepository,
    StageRepository,
    TaskRepository,
    UpdateRepository,
    VersionRepository,
    WorkerRepository,
)

log = logging.getLogger("fedtune.storage.uow")
READ_ONLY_OPTION = "fedtune_read_only"  # an engine execution option: SQLite begins without the write lock
# An engine execution option: the commit need not reach the disk before it returns (SQLite
# synchronous=NORMAL, PostgreSQL synchronous_commit=off). It survives a killed coordinator (the data is
# in the OS, WAL order kept) but a power cut may undo it; never for an accepted update (decision 42).
RELAXED_OPTION = "fedtune_relaxed_durability"


@dataclass(frozen=True)
class Wakeups:
    """What a committed unit of work asks to be woken: every watcher, and these sites' long-polls."""

    sites: frozenset[int] = frozenset()
    all_sites: bool = False


AfterCommit = Callable[[Wakeups], None]


class UnitOfWork(ABC):
    """The interface services use; ``SqlUnitOfWork`` and ``storage.memory.FakeUnitOfWork`` implement it."""

    sites: SiteRepository
    workers: WorkerRepository
    experiments: ExperimentRepository
    stages: StageRepository
    rounds: RoundRepository
    tasks: TaskRepository
    updates: UpdateRepository
    versions: VersionRepository
    events: EventRepository
    secagg: SecAggRepository

    def __init__(self, after_commit: AfterCommit | None = None) -> None:
        self._after_commit = after_commit
        self._wake_sites: set[int] = set()
        self._wake_all = False
        self._wake_any = False

    def wake(self, sites: Iterable[int] = (), *, all_sites: bool = False) -> None:
        """After the next commit, wake the watchers and the long-polls of `sites` (or of all sites)."""
        self._wake_any = True
        self._wake_sites.update(sites)
        self._wake_all = self._wake_all or all_sites

    def _drop_wakeups(self) -> None:
        self._wake_sites, self._wake_all, self._wake_any = set(), False, False

    def _fire_wakeups(self) -> None:
        if not self._wake_any:
            return
        wakeups = Wakeups(frozenset(self._wake_sites), self._wake_all)
        self._drop_wakeups()
        if self._after_commit is not None:
            try:
                self._after_commit(wakeups)
            except Exception:  # the change is committed; a failed wake-up only delays someone
                log.exception("after-commit wake-up failed")

    @abstractmethod
    def __enter__(self) -> UnitOfWork: ...

    @abstractmethod
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def rollback(self) -> None: ...

    @abstractmethod
    def flush(self) -> None:
        """Send pending changes (so generated ids are set) without committing."""


class SqlUnitOfWork(UnitOfWork):
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        after_commit: AfterCommit | None = None,
        *,
        read_only: bool = False,
        relaxed: bool = False,
    ) -> None:
        super().__init__(after_commit)
        self._session_factory = session_factory
        self._session: Session | None = None
        self._read_only = read_only
        self._relaxed = relaxed

    @property
    def session(self) -> Session:
        """The open session: for storage's own code and tests, never for services (use repositories)."""
        if self._session is None:
            raise RuntimeError("use the unit of work inside `with uow:`")
        return self._session

    def __enter__(self) -> SqlUnitOfWork:
        if self._session is not None:
            raise RuntimeError("this unit of work is already open; make a new one per thread/block")
        if self._read_only or self._relaxed:
            bind = self._session_factory.kw["bind"]
            option = READ_ONLY_OPTION if self._read_only else RELAXED_OPTION
            session = self._session = self._session_factory(bind=bind.execution_options(**{option: True}))
        else:
            session = self._session = self._session_factory()
        self.sites = SqlSiteRepository(session)
        self.workers = SqlWorkerRepository(session)
        self.experiments = SqlExperimentRepository(session)
        self.stages = SqlStageRepository(session)
        self.rounds = SqlRoundRepository(session)
        self.tasks = SqlTaskRepository(session)
        self.updates = SqlUpdateRepository(session)
        self.versions = SqlVersionRepository(session)
        self.events = SqlEventRepository(session)
        self.secagg = SqlSecAggRepository(session)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._session is not None
        try:
            self._session.rollback()
        finally:
            self._drop_wakeups()
            self._session.close()
            self._session = None

    def commit(self) -> None:
        if self._read_only:
            raise RuntimeError("a read-only unit of work (UnitOfWorkFactory.reader) cannot commit")
        self.session.commit()
        self._fire_wakeups()

    def rollback(self) -> None:
        self.session.rollback()
        self._drop_wakeups()

    def flush(self) -> None:
        self.session.flush()


class UnitOfWorkFactory:
    """Makes a fresh unit of work per use: ``with uow_factory() as uow:``.

    ``after_commit`` (set once at wiring, e.g. to the coordinator's notifier) hears each commit's
    wake-ups."""

    def __init__(
        self, session_factory: sessionmaker[Session], after_commit: AfterCommit | None = None
    ) -> None:
        self.session_factory = session_factory
        self.after_commit = after_commit

    def __call__(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.session_factory, self.after_commit)

    def reader(self) -> SqlUnitOfWork:
        """A unit of work that only reads (it cannot commit): on SQLite it takes no write lock, so
        lookups (authentication, a heartbeat that changes nothing) never wait behind a commit."""
        return SqlUnitOfWork(self.session_factory, self.after_commit, read_only=True)

    def relaxed(self) -> SqlUnitOfWork:
        """A unit of work whose commit does not wait for the disk (``RELAXED_OPTION``): for writes a
        power cut may undo without losing anything accepted (a lease, a worker's last-seen time), so
        a thousand sites' leases do not queue one fsync each behind the write lock."""
        return SqlUnitOfWork(self.session_factory, self.after_commit, relaxed=True)


# What services take: anything that makes a unit of work (a ``UnitOfWorkFactory``, or the in-memory
# ``storage.memory.FakeUnitOfWorkFactory`` in tests).
class UowFactory(Protocol):
    def __call__(self) -> UnitOfWork: ...

    def reader(self) -> UnitOfWork:
        """A unit of work for reads only (cannot commit)."""
        ...

    def relaxed(self) -> UnitOfWork:
        """A unit of work whose commit may be undone by a power cut (never by a killed process)."""
        ...
