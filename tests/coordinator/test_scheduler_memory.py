"""The scheduler and the experiment/task services over the in-memory unit of work: no database, no gRPC.

These run in milliseconds; the SQLite/PostgreSQL tests (test_scheduler.py and the gRPC suites) keep the
real repositories honest, and tests/storage/test_repositories.py holds both to one contract.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.clock import FakeClock
from coordinator.experiments import ExperimentService
from coordinator.notify import Notifier
from coordinator.scheduler import Scheduler
from coordinator.tasks import TaskService
from storage import models
from storage.memory import FakeUnitOfWorkFactory
from storage.states import ExperimentState, RoundState, TaskState, WorkerState
from storage.uow import Wakeups
from tests.support.cluster import make_settings, spec_yaml


class _IdleAggregator:
    """Stands in for the RoundAggregator: these tests never fold or commit."""

    def __init__(self) -> None:
        self.begun: list[str] = []

    def begin(self, round_id: str) -> None:
        self.begun.append(round_id)

    def discard(self, round_id: str) -> None:
        pass


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.woken: list[Wakeups] = []
        self.uows = FakeUnitOfWorkFactory(after_commit=self.woken.append)
        self.clock = FakeClock()
        self.settings = make_settings(
            tmp_path, "sqlite://", task_lease_seconds=20, worker_offline_after_seconds=30
        )
        self.aggregator = _IdleAggregator()
        self.experiments = ExperimentService(self.uows, self.clock)
        self.tasks = TaskService(self.uows, self.clock, self.settings, Notifier())
        self.scheduler = Scheduler(
            self.uows,
            self.clock,
            self.settings,
            self.aggregator,  # type: ignore[arg-type]
            Notifier(),
        )
        self.sites = {name: models.Site(name=name, token_hash="h") for name in ("a", "b")}
        self.uows.add_all(self.sites.values())

    def site_id(self, name: str) -> int:
        return self.sites[name].id

    def register(self, name: str) -> str:
        return self.tasks.register(self.site_id(name), worker_version="t", device={}, dataset_sizes={})

    def woken_sites(self) -> set[int]:
        return {site for wakeup in self.woken for site in wakeup.sites}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    built = World(tmp_path)
    yield built
    built.scheduler.close()


def test_tick_makes_one_init_task_and_wakes_only_its_site(world: World) -> None:
    # Prepare
    world.register("a")
    experiment_id = world.experiments.submit(spec_yaml(rounds=1, min_sites=2), start=True)
    world.woken.clear()

    # Execute
    world.scheduler.tick()
    world.scheduler.tick()  # idempotent: still one task

    # Assert
    tasks = world.uows.rows(models.Task)
    assert [(t.kind, t.state, t.site_id) for t in tasks] == [("init", TaskState.PENDING, world.site_id("a"))]
    assert tasks[0].experiment_id == experiment_id
    assert world.woken_sites() == {world.site_id("a")}


def test_tick_opens_a_round_for_every_online_site_once_the_initial_version_exists(world: World) -> None:
    # Prepare
    world.register("a"), world.register("b")
    experiment_id = world.experiments.submit(spec_yaml(rounds=2, min_sites=2), start=True)
    world.uows.add_all(
        [models.ModelVersion(id="mv-0", experiment_id=experiment_id, version=0, blob_digest="d")]
    )
    world.woken.clear()

    # Execute
    world.scheduler.tick()

    # Assert
    (rnd,) = world.uows.rows(models.Round)
    assert rnd.state == RoundState.OPEN and rnd.round == 1 and rnd.selected_sites == ["a", "b"]
    assert sorted(t.site_id for t in world.uows.rows(models.Task)) == [world.site_id("a"), world.site_id("b")]
    assert world.aggregator.begun == [rnd.id]  # the round is driven right away
    assert world.woken_sites() == {world.site_id("a"), world.site_id("b")}
    (stage,) = world.uows.rows(models.Stage)
    assert stage.state == "running"


def test_an_expired_lease_goes_back_to_pending_and_a_silent_worker_goes_offline(world: World) -> None:
    # Prepare: a leased INIT task whose worker stops calling
    worker_id = world.register("a")
    world.experiments.submit(spec_yaml(rounds=1, min_sites=1), start=True)
    world.scheduler.tick()
    assert world.tasks.try_lease(world.site_id("a"), worker_id) is not None
    world.woken.clear()

    # Execute
    world.clock.advance(31)  # past the lease (20 s) and the offline limit (30 s)
    world.scheduler.tick()

    # Assert
    (task,) = world.uows.rows(models.Task)
    assert task.state == TaskState.PENDING and task.worker_id is None and task.attempts == 1
    assert world.uows.registry.table(models.Worker)[worker_id].state == WorkerState.OFFLINE
    assert world.site_id("a") in world.woken_sites()
    kinds = [e.kind for e in world.uows.rows(models.Event)]
    assert "task.expired" in kinds and "worker.offline" in kinds


def test_a_new_registration_takes_the_tasks_of_the_sites_earlier_worker_back(world: World) -> None:
    # Prepare
    first = world.register("a")
    world.experiments.submit(spec_yaml(rounds=1, min_sites=1), start=True)
    world.scheduler.tick()
    assert world.tasks.try_lease(world.site_id("a"), first) is not None

    # Execute
    second = world.register("a")

    # Assert
    (task,) = world.uows.rows(models.Task)
    workers = world.uows.registry.table(models.Worker)
    assert task.state == TaskState.PENDING and workers[first].state == WorkerState.OFFLINE
    assert world.tasks.try_lease(world.site_id("a"), second) is not None


def test_experiment_commands_move_the_state_and_wake_every_site(world: World) -> None:
    # Prepare
    experiment_id = world.experiments.submit(spec_yaml(rounds=1, min_sites=1))
    world.woken.clear()

    # Execute
    world.experiments.start(experiment_id)
    world.experiments.pause(experiment_id, "maintenance")
    world.experiments.pause(experiment_id)  # idempotent: no second change
    round_ids = world.experiments.abort(experiment_id, "done testing")

    # Assert
    (experiment,) = world.uows.rows(models.Experiment)
    assert experiment.state == ExperimentState.ABORTED and experiment.error == "aborted: done testing"
    assert round_ids == []
    assert [w.all_sites for w in world.woken] == [True, True, False]
    kinds = [e.kind for e in world.uows.rows(models.Event)]
    assert kinds[-3:] == ["experiment.started", "experiment.paused", "experiment.aborted"]


def test_the_scheduler_collects_garbage_every_gc_interval_seconds(tmp_path: Path) -> None:
    # Prepare: a collector that counts, a 60 s interval
    class CountingCollector:
        calls = 0

        def submit_periodic(self) -> None:
            self.calls += 1

    collector = CountingCollector()
    uows, clock = FakeUnitOfWorkFactory(), FakeClock()
    settings = make_settings(tmp_path, "sqlite://", gc_interval_seconds=60)
    scheduler = Scheduler(uows, clock, settings, _IdleAggregator(), Notifier(), collector)  # type: ignore[arg-type]

    # Execute / Assert: nothing before the interval, then once per interval
    try:
        scheduler.tick()
        assert collector.calls == 0
        clock.advance(61)
        scheduler.tick()
        scheduler.tick()
        assert collector.calls == 1
        clock.advance(61)
        scheduler.tick()
        assert collector.calls == 2
    finally:
        scheduler.close()
