"""The scheduler state machine as plain services, with a fake clock (no gRPC)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sqlalchemy import select

from coordinator.bootstrap import Services, bootstrap
from coordinator.clock import FakeClock
from coordinator.selection import select_sites
from fedtune.serde import UpdateHeaderRecord
from fedtune.spec import SelectionSpec
from fedtune.tensorstream.encoder import iter_chunks_from_arrays, manifest_for_arrays
from storage import models
from tests.support.cluster import SITES, make_settings, spec_yaml
from tests.support.fake_worker import initial_arrays
from tests.support.waiting import wait_for


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def services(tmp_path: Path, clock: FakeClock) -> Iterator[Services]:
    settings = make_settings(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'unit.db'}",
        task_lease_seconds=20,
        worker_offline_after_seconds=30,
    )
    built = bootstrap(settings, clock=clock)
    yield built
    built.close()


def site_id(services: Services, site: str) -> int:
    return services.auth.authenticate_site(site, SITES[site])


def register(services: Services, site: str) -> str:
    return services.tasks.register(site_id(services, site), worker_version="t", device={}, dataset_sizes={})


def push(
    services: Services, site: str, task_id: str, arrays: dict[str, np.ndarray], num_examples: int
) -> str:
    manifest = manifest_for_arrays(arrays)
    header = UpdateHeaderRecord(task_id=task_id, num_examples=num_examples, manifest=manifest)
    items = iter([header, *iter_chunks_from_arrays(arrays, manifest, 128)])
    update_id, _ = services.uploads.push(site_id(services, site), items)
    return update_id


def initialized(
    services: Services, spec: str, sites: tuple[str, ...] = ("a", "b", "c")
) -> tuple[str, dict[str, str]]:
    workers = {site: register(services, site) for site in sites}
    experiment_id = services.experiments.submit(spec, start=True)
    services.scheduler.tick()
    for site in sites:
        task = services.tasks.pull(site_id(services, site), workers[site], 0)
        if task is not None:
            assert task.kind == "init"
            push(services, site, task.task_id, initial_arrays(), 0)
            break
    services.scheduler.tick()
    return experiment_id, workers


def rounds(services: Services, experiment_id: str) -> list[SimpleNamespace]:
    with services.uow_factory() as uow:
        rows = uow.session.scalars(
            select(models.Round)
            .where(models.Round.experiment_id == experiment_id)
            .order_by(models.Round.round)
        )
        return [
            SimpleNamespace(state=r.state, reason=r.reason, selected_sites=list(r.selected_sites))
            for r in rows
        ]


def experiment(services: Services, experiment_id: str) -> SimpleNamespace:
    with services.uow_factory() as uow:
        row = uow.session.get(models.Experiment, experiment_id)
        assert row is not None
        return SimpleNamespace(state=row.state, error=row.error)


def task_state(services: Services, task_id: str) -> str:
    with services.uow_factory() as uow:
        return uow.session.get(models.Task, task_id).state  # type: ignore[union-attr]


def test_opens_no_round_until_min_sites_are_online(services: Services) -> None:
    # Prepare
    experiment_id, _ = initialized(services, spec_yaml(min_sites=3), sites=("a", "b"))

    # Execute
    services.scheduler.tick()
    before = rounds(services, experiment_id)
    register(services, "c")
    services.scheduler.tick()

    # Assert
    assert before == []
    assert [r.state for r in rounds(services, experiment_id)] == ["collecting"]
    assert sorted(rounds(services, experiment_id)[0].selected_sites) == ["a", "b", "c"]


def test_expired_lease_returns_the_task_to_pending(services: Services, clock: FakeClock) -> None:
    # Prepare
    _, workers = initialized(services, spec_yaml(min_sites=1), sites=("a",))
    task = services.tasks.pull(site_id(services, "a"), workers["a"], 0)
    assert task is not None and task.kind == "train"

    # Execute
    clock.advance(21)
    services.tasks.heartbeat(site_id(services, "a"), workers["a"])  # keeps the worker online, not the task
    services.scheduler.tick()
    again = services.tasks.pull(site_id(services, "a"), workers["a"], 0)

    # Assert
    assert again is not None and again.task_id == task.task_id


def test_heartbeat_naming_the_task_extends_its_lease(services: Services, clock: FakeClock) -> None:
    # Prepare
    _, workers = initialized(services, spec_yaml(min_sites=1), sites=("a",))
    task = services.tasks.pull(site_id(services, "a"), workers["a"], 0)
    assert task is not None

    # Execute
    clock.advance(15)
    cancel = services.tasks.heartbeat(site_id(services, "a"), workers["a"], task.task_id)
    clock.advance(15)
    services.scheduler.tick()

    # Assert
    assert cancel is False
    assert task_state(services, task.task_id) == "leased"


def test_deadline_with_too_few_updates_fails_round_and_experiment(
    services: Services, clock: FakeClock
) -> None:
    # Prepare
    experiment_id, _ = initialized(services, spec_yaml(min_sites=2, deadline=10))

    # Execute
    clock.advance(11)
    services.scheduler.tick()

    # Assert
    (rnd,) = rounds(services, experiment_id)
    assert rnd.state == "failed" and "min_sites=2" in rnd.reason
    row = experiment(services, experiment_id)
    assert row.state == "failed" and "round 1 failed" in row.error


def test_deadline_with_enough_updates_commits(services: Services, clock: FakeClock) -> None:
    # Prepare
    experiment_id, workers = initialized(services, spec_yaml(rounds=1, min_sites=2, deadline=10))
    for site in ("a", "b"):
        task = services.tasks.pull(site_id(services, site), workers[site], 0)
        assert task is not None
        push(services, site, task.task_id, initial_arrays(seed=3), 5)
    services.scheduler.tick()
    assert rounds(services, experiment_id)[0].state == "collecting"  # c still has its task

    # Execute
    clock.advance(11)
    services.scheduler.tick()

    # Assert
    assert rounds(services, experiment_id)[0].state == "committed"
    assert experiment(services, experiment_id).state == "completed"


def test_pause_stops_new_rounds_and_resume_continues(services: Services) -> None:
    # Prepare
    experiment_id, workers = initialized(services, spec_yaml(rounds=2, min_sites=1), sites=("a",))
    services.experiments.pause(experiment_id)
    task = services.tasks.pull(site_id(services, "a"), workers["a"], 0)  # the open round still runs
    assert task is not None

    # Execute
    push(services, "a", task.task_id, initial_arrays(seed=4), 3)
    services.scheduler.tick()
    paused = [r.state for r in rounds(services, experiment_id)]
    services.experiments.resume(experiment_id)
    services.scheduler.tick()

    # Assert
    assert paused == ["committed"]
    assert [r.state for r in rounds(services, experiment_id)] == ["committed", "collecting"]


def test_abort_cancels_open_tasks(services: Services) -> None:
    # Prepare
    experiment_id, _ = initialized(services, spec_yaml(min_sites=1))

    # Execute
    services.experiments.abort(experiment_id, "operator said so")

    # Assert
    with services.uow_factory() as uow:
        states = set(
            uow.session.scalars(
                select(models.Task.state).where(
                    models.Task.experiment_id == experiment_id, models.Task.kind == "train"
                )
            )
        )
    assert states == {"cancelled"}
    assert experiment(services, experiment_id).state == "aborted"
    assert rounds(services, experiment_id)[0].state == "failed"


def test_worker_goes_offline_after_silence(services: Services, clock: FakeClock) -> None:
    # Prepare
    worker_id = register(services, "a")

    # Execute
    clock.advance(31)
    services.scheduler.tick()

    # Assert
    with services.uow_factory() as uow:
        state = uow.session.get(models.Worker, worker_id).state  # type: ignore[union-attr]
    assert state == "offline"


def test_register_releases_tasks_leased_to_the_sites_previous_worker(services: Services) -> None:
    # Prepare
    _, workers = initialized(services, spec_yaml(min_sites=1), sites=("a",))
    task = services.tasks.pull(site_id(services, "a"), workers["a"], 0)
    assert task is not None

    # Execute
    new_worker = register(services, "a")
    again = services.tasks.pull(site_id(services, "a"), new_worker, 0)

    # Assert
    assert again is not None and again.task_id == task.task_id


def test_fraction_selection_is_seeded_and_respects_min_sites() -> None:
    selection = SelectionSpec(mode="fraction", fraction=0.5, min_sites=2)
    online = [f"s{i}" for i in range(10)]

    first = select_sites(online, selection, seed=7, round_number=3)
    again = select_sites(online, selection, seed=7, round_number=3)

    assert first == again and first is not None and len(first) == 5
    assert select_sites(online[:1], selection, seed=7, round_number=3) is None
    restricted = SelectionSpec(sites=["s1", "s2", "zz"], min_sites=2)
    assert select_sites(online, restricted, seed=0, round_number=1) == ["s1", "s2"]


def test_a_slow_round_commit_does_not_stall_lease_expiry_or_other_experiments(
    services: Services, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: experiment 1's round has every update, and its commit blocks until released
    first, workers = initialized(services, spec_yaml(rounds=1, min_sites=3))
    for site in ("a", "b", "c"):
        task = services.tasks.pull(site_id(services, site), workers[site], 0)
        assert task is not None
        push(services, site, task.task_id, initial_arrays(), 10)
    entered, release = threading.Event(), threading.Event()
    commit = services.aggregator.commit

    def slow_commit(round_id: str) -> str:
        entered.set()
        release.wait(30)
        return commit(round_id)

    monkeypatch.setattr(services.aggregator, "commit", slow_commit)
    second = services.experiments.submit(spec_yaml(rounds=1, min_sites=1, sites=["a"]), start=True)
    stop = threading.Event()
    loop = threading.Thread(target=services.scheduler.run, args=(stop,), daemon=True)
    loop.start()
    try:
        # Execute: while experiment 1 commits, experiment 2 gets its INIT task, whose lease runs out
        assert entered.wait(10)
        init = wait_for(lambda: services.tasks.pull(site_id(services, "a"), workers["a"], 0.1))
        assert init is not None and init.kind == "init"
        clock.advance(21)
        services.notifier.notify()

        # Assert: the scheduler thread went on (the old synchronous commit held it until release)
        wait_for(lambda: task_state(services, init.task_id) == "pending")
        assert [r.state for r in rounds(services, first)] == ["collecting"]  # its commit still waits
        assert experiment(services, second).state == "running"
    finally:
        release.set()
        wait_for(lambda: [r.state for r in rounds(services, first)] == ["committed"])
        stop.set()
        loop.join(10)
