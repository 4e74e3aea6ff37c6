"""An in-memory registry behind the same repositories: fast service and scheduler tests, no database.

``FakeUnitOfWorkFactory()`` makes units of work over one ``InMemoryRegistry`` (rows are plain ORM
objects kept in dicts; column defaults are filled in when a row is added, ids counted up). It has no
transactions: a change is visible at once and ``rollback`` undoes nothing, so tests of rollback or of
concurrency belong to the SQL contract suite (``tests/storage/test_repositories.py`` runs the same
repository tests against SQLite, PostgreSQL and this). ``commits`` counts commits for assertions.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

from fedtune.errors import ErrorCode, FedtuneError
from storage.models import (
    Base,
    Event,
    Experiment,
    ModelVersion,
    Round,
    SecAggRound,
    SecAggShare,
    SecAggSite,
    Site,
    Stage,
    StrategyState,
    Task,
    Update,
    Worker,
)
from storage.repositories import (
    EventRepository,
    ExperimentRepository,
    RoundRepository,
    SecAggRepository,
    SiteRepository,
    StageRepository,
    TaskRepository,
    UpdateRepository,
    VersionRepository,
    WorkerRepository,
)
from storage.repositories.versions import _older_states
from storage.states import (
    FOLDABLE_UPDATE_STATES,
    LIVE_EXPERIMENT_STATES,
    LIVE_TASK_STATES,
    OPEN_ROUND_STATES,
    RoundState,
    TaskState,
    WorkerState,
)
from storage.uow import AfterCommit, UnitOfWork

R = TypeVar("R", bound=Base)


def fill_defaults(row: Base) -> None:
    """Set every unset column that has a Python-side default, as an INSERT would."""
    for column in row.__table__.columns:
        default = column.default
        if getattr(row, column.key, None) is not None or default is None or not hasattr(default, "arg"):
            continue
        value = default.arg(None) if getattr(default, "is_callable", False) else default.arg
        setattr(row, column.key, value)


class InMemoryRegistry:
    """The tables: primary key -> row."""

    def __init__(self) -> None:
        self.tables: dict[type[Base], dict[Any, Any]] = {}
        self._ids = itertools.count(1)

    def table(self, model: type[R]) -> dict[Any, R]:
        return self.tables.setdefault(model, {})

    def add(self, row: Base) -> None:
        fill_defaults(row)
        key_column = str(type(row).__mapper__.primary_key[0].key)
        if getattr(row, key_column, None) is None:
            setattr(row, key_column, next(self._ids))
        self.table(type(row))[getattr(row, key_column)] = row

    def rows(self, model: type[R]) -> list[R]:
        return list(self.table(model).values())


class _Repo:
    def __init__(self, registry: InMemoryRegistry) -> None:
        self._db = registry


class FakeSiteRepository(_Repo, SiteRepository):
    def add(self, site: Site) -> None:
        self._db.add(site)

    def get(self, site_id: int) -> Site | None:
        return self._db.table(Site).get(site_id)

    def by_name(self, name: str) -> Site | None:
        return next((s for s in self._db.rows(Site) if s.name == name), None)

    def by_folded_name(self, name: str) -> Site | None:
        return next((s for s in self._db.rows(Site) if s.name.lower() == name.lower()), None)

    def by_names(self, names: Sequence[str]) -> list[Site]:
        return sorted((s for s in self._db.rows(Site) if s.name in set(names)), key=lambda s: s.name)

    def all(self) -> list[Site]:
        return sorted(self._db.rows(Site), key=lambda s: s.name)

    def online_names(self, now: float, offline_after: float) -> list[str]:
        first_seen: dict[str, float] = {}
        for worker in self._db.rows(Worker):
            site = self.get(worker.site_id)
            live = worker.state == WorkerState.ONLINE and worker.last_seen_at >= now - offline_after
            if site is None or site.revoked_at is not None or not live:
                continue
            first_seen[site.name] = min(first_seen.get(site.name, worker.registered_at), worker.registered_at)
        return sorted(first_seen, key=lambda name: (first_seen[name], name))


class FakeWorkerRepository(_Repo, WorkerRepository):
    def add(self, worker: Worker) -> None:
        self._db.add(worker)

    def get(self, worker_id: str) -> Worker | None:
        return self._db.table(Worker).get(worker_id)

    def for_site(self, site_id: int) -> list[Worker]:
        return [w for w in self._db.rows(Worker) if w.site_id == site_id]

    def stale(self, cutoff: float) -> list[Worker]:
        return [w for w in self._db.rows(Worker) if w.state == WorkerState.ONLINE and w.last_seen_at < cutoff]

    def prune(self, site_id: int, keep: int) -> None:
        newest = sorted(self.for_site(site_id), key=lambda w: (w.registered_at, w.id), reverse=True)[:keep]
        kept = {w.id for w in newest}
        holding = {t.worker_id for t in self._db.rows(Task) if t.state == TaskState.LEASED}
        for worker in self.for_site(site_id):
            if (
                worker.id not in kept
                and worker.state == WorkerState.OFFLINE
                and worker.current_task_id is None
                and worker.id not in holding
            ):
                del self._db.table(Worker)[worker.id]

    def count_online(self, cutoff: float) -> int:
        return sum(
            1 for w in self._db.rows(Worker) if w.state == WorkerState.ONLINE and w.last_seen_at >= cutoff
        )

    def online_site_ids(self, site_ids: Sequence[int]) -> set[int]:
        wanted = set(site_ids)
        return {
            w.site_id for w in self._db.rows(Worker) if w.site_id in wanted and w.state == WorkerState.ONLINE
        }

    def with_site_names(self) -> list[tuple[Worker, str]]:
        sites = self._db.table(Site)
        rows = [(w, sites[w.site_id].name) for w in self._db.rows(Worker) if w.site_id in sites]
        return sorted(rows, key=lambda row: (row[1], row[0].registered_at))

    def site_summaries(self) -> dict[int, tuple[int, float]]:
        out: dict[int, tuple[int, float]] = {}
        for w in self._db.rows(Worker):
            online, last = out.get(w.site_id, (0, 0.0))
            out[w.site_id] = (online + (w.state == WorkerState.ONLINE), max(last, w.last_seen_at))
        return out


class FakeExperimentRepository(_Repo, ExperimentRepository):
    def add(self, experiment: Experiment) -> None:
        self._db.add(experiment)

    def get(self, experiment_id: str) -> Experiment | None:
        return self._db.table(Experiment).get(experiment_id)

    def all(self) -> list[Experiment]:
        return sorted(self._db.rows(Experiment), key=lambda e: e.created_at)

    def live_ids(self) -> list[str]:
        return [e.id for e in self.all() if e.state in LIVE_EXPERIMENT_STATES]

    def count_live(self) -> int:
        return len(self.live_ids())


class FakeStageRepository(_Repo, StageRepository):
    def add(self, stage: Stage) -> None:
        self._db.add(stage)

    def find(self, experiment_id: str, index: int) -> Stage | None:
        return next(
            (s for s in self._db.rows(Stage) if s.experiment_id == experiment_id and s.stage_index == index),
            None,
        )

    def for_experiment(self, experiment_id: str) -> list[Stage]:
        stages = [s for s in self._db.rows(Stage) if s.experiment_id == experiment_id]
        return sorted(stages, key=lambda s: s.stage_index)


class FakeRoundRepository(_Repo, RoundRepository):
    def add(self, rnd: Round) -> None:
        self._db.add(rnd)

    def get(self, round_id: str) -> Round | None:
        return self._db.table(Round).get(round_id)

    def _of(self, experiment_id: str) -> list[Round]:
        rounds = [r for r in self._db.rows(Round) if r.experiment_id == experiment_id]
        return sorted(rounds, key=lambda r: (r.stage_index, r.round))

    def latest(self, experiment_id: str, stage_index: int) -> Round | None:
        rounds = [r for r in self._of(experiment_id) if r.stage_index == stage_index]
        return rounds[-1] if rounds else None

    def open_for_experiment(self, experiment_id: str) -> list[Round]:
        return [r for r in self._of(experiment_id) if r.state in OPEN_ROUND_STATES]

    def open_ids(self) -> set[str]:
        return {r.id for r in self._db.rows(Round) if r.state in OPEN_ROUND_STATES}

    def page(self, experiment_id: str, offset: int, limit: int) -> list[Round]:
        return self._of(experiment_id)[offset : offset + limit]

    def foldable_updates(
        self, round_id: str, *, by_site: bool = False, limit: int | None = None
    ) -> list[tuple[Update, str]]:
        sites = self._db.table(Site)
        rows = [
            (u, sites[u.site_id].name)
            for u in self._db.rows(Update)
            if u.round_id == round_id and u.state in FOLDABLE_UPDATE_STATES
        ]
        rows.sort(key=(lambda r: r[1]) if by_site else (lambda r: (r[0].created_at, r[0].id)))
        return rows if limit is None else rows[:limit]

    def count_foldable(self, round_id: str) -> int:
        return len(self.foldable_updates(round_id))

    def count_by_state(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for rnd in self._db.rows(Round):
            counts[str(rnd.state)] = counts.get(str(rnd.state), 0) + 1
        return counts


class FakeTaskRepository(_Repo, TaskRepository):
    def add(self, task: Task) -> None:
        self._db.add(task)

    def get(self, task_id: str) -> Task | None:
        return self._db.table(Task).get(task_id)

    def _where(self, keep: Callable[[Task], bool]) -> list[Task]:
        return sorted((t for t in self._db.rows(Task) if keep(t)), key=lambda t: (t.created_at, t.id))

    def in_round(self, round_id: str) -> list[Task]:
        return self._where(lambda t: t.round_id == round_id)

    def init_tasks(self, experiment_id: str, stage_index: int) -> list[Task]:
        return self._where(
            lambda t: t.experiment_id == experiment_id and t.kind == "init" and t.stage_index == stage_index
        )

    def live_for_experiment(self, experiment_id: str) -> list[Task]:
        return self._where(lambda t: t.experiment_id == experiment_id and t.state in LIVE_TASK_STATES)

    def live_for_round(self, round_id: str) -> list[Task]:
        return self._where(lambda t: t.round_id == round_id and t.state in LIVE_TASK_STATES)

    def live_for_site(self, site_id: int) -> list[Task]:
        return self._where(lambda t: t.site_id == site_id and t.state in LIVE_TASK_STATES)

    def expired_leases(self, now: float) -> list[Task]:
        return self._where(
            lambda t: (
                t.state == TaskState.LEASED and t.lease_expires_at is not None and t.lease_expires_at < now
            )
        )

    def leased_by_workers(self, worker_ids: Sequence[str]) -> list[Task]:
        return self._where(lambda t: t.state == TaskState.LEASED and t.worker_id in set(worker_ids))

    def leasable_for_site(self, site_id: int, limit: int) -> list[Task]:
        experiments, rounds = self._db.table(Experiment), self._db.table(Round)

        def leasable(task: Task) -> bool:
            experiment = experiments.get(task.experiment_id)
            rnd = rounds.get(task.round_id) if task.round_id else None
            return (
                task.site_id == site_id
                and task.state == TaskState.PENDING
                and experiment is not None
                and experiment.state in LIVE_EXPERIMENT_STATES
                and (task.round_id is None or (rnd is not None and rnd.state == RoundState.COLLECTING))
            )

        return self._where(leasable)[:limit]

    def swap_state(
        self, task: Task, expected: str, target: str, *, count_attempt: bool = False, **values: Any
    ) -> bool:
        if task.state != expected:
            return False
        task.state = target
        task.attempts += 1 if count_attempt else 0
        for key, value in values.items():
            setattr(task, key, value)
        return True

    def done_in_round(self, round_id: str) -> list[tuple[Task, str]]:
        sites = self._db.table(Site)
        return [
            (t, sites[t.site_id].name)
            for t in self._where(lambda t: t.round_id == round_id and t.state == TaskState.DONE)
        ]

    def site_has_task_in(self, experiment_id: str, site_id: int) -> bool:
        return bool(self._where(lambda t: t.experiment_id == experiment_id and t.site_id == site_id))


class FakeUpdateRepository(_Repo, UpdateRepository):
    def add(self, update: Update) -> None:
        self._db.add(update)

    def get(self, update_id: str) -> Update | None:
        return self._db.table(Update).get(update_id)

    def for_task(self, task_id: str) -> Update | None:
        return next((u for u in self._db.rows(Update) if u.task_id == task_id), None)


class FakeVersionRepository(_Repo, VersionRepository):
    def add(self, version: ModelVersion) -> None:
        if self.numbered(version.experiment_id, version.version) is not None:
            raise FedtuneError(ErrorCode.ALREADY_EXISTS, f"version {version.version} exists")
        self._db.add(version)

    def get(self, version_id: str) -> ModelVersion | None:
        return self._db.table(ModelVersion).get(version_id)

    def latest(self, experiment_id: str, *, stage_index: int | None = None) -> ModelVersion | None:
        versions = [
            v for v in self.ordered(experiment_id) if stage_index is None or v.stage_index == stage_index
        ]
        return versions[-1] if versions else None

    def numbered(self, experiment_id: str, version: int) -> ModelVersion | None:
        return next((v for v in self.ordered(experiment_id) if v.version == version), None)

    def ordered(self, experiment_id: str | None = None) -> list[ModelVersion]:
        versions = [v for v in self._db.rows(ModelVersion) if experiment_id in (None, v.experiment_id)]
        return sorted(versions, key=lambda v: (v.experiment_id, v.version))

    def add_strategy_state(self, state: StrategyState) -> None:
        self._db.add(state)

    def strategy_state_before(self, experiment_id: str, stage_index: int, round: int) -> StrategyState | None:
        states = [
            s
            for s in self._db.rows(StrategyState)
            if s.experiment_id == experiment_id and s.stage_index == stage_index and s.round < round
        ]
        return max(states, key=lambda s: s.round, default=None)

    def prune_strategy_states(self, *, dry_run: bool = False) -> int:
        rows = self._db.rows(StrategyState)
        stale = _older_states([(s.id, (s.experiment_id, s.stage_index), s.round) for s in rows])
        if not dry_run:
            for state_id in stale:
                del self._db.table(StrategyState)[state_id]
        return len(stale)

    def referenced_blob_digests(self) -> set[str]:
        digests: set[str] = set()
        for version in self._db.rows(ModelVersion):
            if version.pruned_at is None:
                digests.add(version.blob_digest)
                digests.update(str(d) for d in (version.files or {}).values())
        digests.update(s.blob_digest for s in self._db.rows(StrategyState) if s.blob_digest)
        for update in self._db.rows(Update):
            digests.update(str(d) for d in (update.files or {}).values())
        return digests


class FakeEventRepository(_Repo, EventRepository):
    def add(self, event: Event) -> None:
        self._db.add(event)

    def after(self, after_id: int, *, experiment_id: str | None = None, limit: int = 100) -> list[Event]:
        events = [
            e
            for e in sorted(self._db.rows(Event), key=lambda e: e.id)
            if e.id > after_id and experiment_id in (None, e.experiment_id)
        ]
        return events[:limit]

    def latest_of_kinds(self, experiment_id: str, kinds: Sequence[str]) -> Event | None:
        events = [e for e in self._db.rows(Event) if e.experiment_id == experiment_id and e.kind in kinds]
        return max(events, key=lambda e: e.id, default=None)


class FakeSecAggRepository(_Repo, SecAggRepository):
    def add(self, row: SecAggRound | SecAggSite | SecAggShare) -> None:
        self._db.add(row)

    def round(self, round_id: str) -> SecAggRound | None:
        return self._db.table(SecAggRound).get(round_id)

    def sites(self, round_id: str) -> list[SecAggSite]:
        return sorted(
            (s for s in self._db.rows(SecAggSite) if s.round_id == round_id), key=lambda s: s.site_index
        )

    def shares(self, round_id: str, *, holder: int | None = None) -> list[SecAggShare]:
        rows = [
            s
            for s in self._db.rows(SecAggShare)
            if s.round_id == round_id and (holder is None or s.holder == holder)
        ]
        return sorted(rows, key=lambda s: (s.owner, s.holder))


class FakeUnitOfWork(UnitOfWork):
    def __init__(
        self, registry: InMemoryRegistry, after_commit: AfterCommit | None = None, *, read_only: bool = False
    ) -> None:
        super().__init__(after_commit)
        self._read_only = read_only
        self.registry = registry
        self.sites = FakeSiteRepository(registry)
        self.workers = FakeWorkerRepository(registry)
        self.experiments = FakeExperimentRepository(registry)
        self.stages = FakeStageRepository(registry)
        self.rounds = FakeRoundRepository(registry)
        self.tasks = FakeTaskRepository(registry)
        self.updates = FakeUpdateRepository(registry)
        self.versions = FakeVersionRepository(registry)
        self.events = FakeEventRepository(registry)
        self.secagg = FakeSecAggRepository(registry)
        self.committed = 0

    def __enter__(self) -> FakeUnitOfWork:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._drop_wakeups()

    def commit(self) -> None:
        if self._read_only:
            raise RuntimeError("a read-only unit of work (reader) cannot commit")
        self.committed += 1
        self._fire_wakeups()

    def rollback(self) -> None:
        self._drop_wakeups()

    def flush(self) -> None:
        pass


class FakeUnitOfWorkFactory:
    """``with factory() as uow:`` over one shared in-memory registry; `commits` counts all commits."""

    def __init__(self, after_commit: AfterCommit | None = None) -> None:
        self.registry = InMemoryRegistry()
        self.after_commit = after_commit
        self._made: list[FakeUnitOfWork] = []

    def __call__(self) -> FakeUnitOfWork:
        uow = FakeUnitOfWork(self.registry, self.after_commit)
        self._made.append(uow)
        return uow

    def reader(self) -> FakeUnitOfWork:
        """A unit of work that cannot commit, like ``UnitOfWorkFactory.reader``."""
        return FakeUnitOfWork(self.registry, self.after_commit, read_only=True)

    def relaxed(self) -> FakeUnitOfWork:
        """Like ``UnitOfWorkFactory.relaxed`` (in memory, durability is moot)."""
        return self()

    @property
    def commits(self) -> int:
        return sum(uow.committed for uow in self._made)

    def rows(self, model: type[R]) -> list[R]:
        return self.registry.rows(model)

    def add_all(self, rows: Iterable[Base]) -> None:
        for row in rows:
            self.registry.add(row)
