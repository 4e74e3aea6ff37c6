"""One contract for the repositories: the SQL ones (SQLite, PostgreSQL) and the in-memory fakes answer alike.

The coordinator's fast tests run on the fakes (storage/memory.py); this suite keeps them honest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from storage import models
from storage.db import open_registry
from storage.memory import FakeUnitOfWorkFactory
from storage.states import RoundState, StageState, TaskState, UpdateState, WorkerState
from storage.uow import UnitOfWork, Wakeups

NOW = 1_700_000_000.0


@pytest.fixture(params=["sql", "memory"])
def uows(request: pytest.FixtureRequest, database_url: str) -> Iterator[Callable[[], UnitOfWork]]:
    if request.param == "memory":
        yield FakeUnitOfWorkFactory()
        return
    engine, factory = open_registry(database_url)
    try:
        yield factory
    finally:
        engine.dispose()


def _seed(uows: Callable[[], UnitOfWork]) -> dict[str, int]:
    """Sites a, b; one experiment with a global and a finetune stage; round 1 with a task per site."""
    with uows() as uow:
        for name in ("b", "a"):
            uow.sites.add(models.Site(name=name, token_hash="h"))
        uow.experiments.add(
            models.Experiment(
                id="exp-1", name="e", spec_yaml="", spec_json="{}", state="running", created_at=1
            )
        )
        uow.flush()
        uow.stages.add(
            models.Stage(
                experiment_id="exp-1",
                stage_index=0,
                name="g",
                kind="global",
                state=StageState.COMPLETED,
                rounds_total=1,
                output_version_id="mv-g",
            )
        )
        uow.stages.add(
            models.Stage(experiment_id="exp-1", stage_index=1, name="f", kind="finetune", rounds_total=2)
        )
        uow.rounds.add(
            models.Round(
                id="r-1", experiment_id="exp-1", stage_index=1, round=1, state="collecting", deadline_at=NOW
            )
        )
        uow.flush()
        ids = {site.name: site.id for site in uow.sites.all()}
        for name, created in (("a", 2.0), ("b", 1.0)):
            uow.tasks.add(
                models.Task(
                    id=f"t-{name}",
                    experiment_id="exp-1",
                    round_id="r-1",
                    site_id=ids[name],
                    kind="train",
                    stage_index=1,
                    state="pending",
                    deadline_at=NOW,
                    created_at=created,
                )
            )
        uow.commit()
    return ids


def test_stages_get_current_and_the_last_global_output(uows: Callable[[], UnitOfWork]) -> None:
    # Prepare
    _seed(uows)

    # Execute / Assert
    with uows() as uow:
        experiment = uow.experiments.get("exp-1")
        assert experiment is not None
        assert uow.stages.current(experiment).name == "g"  # type: ignore[union-attr]
        assert uow.stages.get("exp-1", 1).kind == "finetune"
        assert uow.stages.find("exp-1", 5) is None
        assert uow.stages.last_index("exp-1") == 1
        assert uow.stages.latest_global_output("exp-1", 1) == "mv-g"
        assert uow.stages.latest_global_output("exp-1", 0) is None
        assert uow.experiments.live_ids() == ["exp-1"] and uow.experiments.count_live() == 1


def test_foldable_updates_leave_out_rejected_ones_and_keep_their_order(
    uows: Callable[[], UnitOfWork],
) -> None:
    # Prepare: b's update arrives first, a's second, and one more from a is rejected
    ids = _seed(uows)
    with uows() as uow:
        for update_id, task, site, state, created in (
            ("u-b", "t-b", "b", UpdateState.FOLDED, 1.0),
            ("u-a", "t-a", "a", UpdateState.VERIFIED, 2.0),
        ):
            uow.updates.add(
                models.Update(
                    id=update_id,
                    task_id=task,
                    round_id="r-1",
                    site_id=ids[site],
                    state=state,
                    created_at=created,
                )
            )
        uow.tasks.add(
            models.Task(
                id="t-x",
                experiment_id="exp-1",
                round_id="r-1",
                site_id=ids["a"],
                kind="train",
                deadline_at=NOW,
            )
        )
        uow.flush()
        uow.updates.add(
            models.Update(
                id="u-x", task_id="t-x", round_id="r-1", site_id=ids["a"], state=UpdateState.REJECTED
            )
        )
        uow.commit()

    # Execute
    with uows() as uow:
        arrival = [(u.id, site) for u, site in uow.rounds.foldable_updates("r-1")]
        by_site = [(u.id, site) for u, site in uow.rounds.foldable_updates("r-1", by_site=True, limit=1)]
        count = uow.rounds.count_foldable("r-1")
        rejected = uow.updates.for_task("t-x")
        rejected_state = rejected.state if rejected is not None else None

    # Assert
    assert arrival == [("u-b", "b"), ("u-a", "a")]
    assert by_site == [("u-a", "a")]
    assert count == 2 and rejected_state == UpdateState.REJECTED


def test_rounds_are_counted_by_state(uows: Callable[[], UnitOfWork]) -> None:
    # Prepare: r-1 collects (from _seed); two more rounds, one committed and one failed
    _seed(uows)
    with uows() as uow:
        for number, state in ((2, RoundState.COMMITTED), (3, RoundState.FAILED)):
            uow.rounds.add(
                models.Round(
                    id=f"r-{number}",
                    experiment_id="exp-1",
                    stage_index=1,
                    round=number,
                    state=state,
                    deadline_at=NOW,
                )
            )
        uow.commit()

    # Execute
    with uows() as uow:
        counts = uow.rounds.count_by_state()

    # Assert
    assert counts == {"collecting": 1, "committed": 1, "failed": 1}


def test_leasable_tasks_and_the_compare_and_set_that_leases_one(uows: Callable[[], UnitOfWork]) -> None:
    # Prepare
    ids = _seed(uows)

    # Execute
    with uows() as uow:
        candidates = [t.id for t in uow.tasks.leasable_for_site(ids["a"], 5)]
        task = uow.tasks.get("t-a")
        assert task is not None
        first = uow.tasks.swap_state(
            task, TaskState.PENDING, TaskState.LEASED, count_attempt=True, worker_id="w"
        )
        second = uow.tasks.swap_state(task, TaskState.PENDING, TaskState.LEASED, worker_id="other")
        uow.commit()
    with uows() as uow:
        stored = uow.tasks.get("t-a")
        assert stored is not None
        leased = (stored.state, stored.worker_id, stored.attempts)
        live = sorted(t.id for t in uow.tasks.live_for_round("r-1"))
        live_sites = uow.tasks.live_site_ids_in_round("r-1")
        after = [t.id for t in uow.tasks.leasable_for_site(ids["a"], 5)]

    # Assert
    assert candidates == ["t-a"] and first and not second
    assert leased == ("leased", "w", 1)
    assert live == ["t-a", "t-b"] and after == []
    assert live_sites == {ids["a"], ids["b"]}


def test_a_round_that_is_not_collecting_hides_its_tasks(uows: Callable[[], UnitOfWork]) -> None:
    # Prepare
    ids = _seed(uows)
    with uows() as uow:
        rnd = uow.rounds.get("r-1")
        assert rnd is not None
        rnd.state = RoundState.OPEN  # (a test may set a row up directly)
        uow.commit()

    # Execute / Assert
    with uows() as uow:
        assert uow.tasks.leasable_for_site(ids["b"], 5) == []
        assert uow.rounds.open_ids() == {"r-1"} and uow.rounds.latest("exp-1", 1).id == "r-1"  # type: ignore[union-attr]


def test_online_sites_in_order_of_their_oldest_live_worker(uows: Callable[[], UnitOfWork]) -> None:
    # Prepare: b registered first; a's other worker is stale; a revoked site is never online
    ids = _seed(uows)
    with uows() as uow:
        uow.sites.add(models.Site(name="gone", token_hash="h", revoked_at=NOW))
        uow.flush()
        gone = uow.sites.by_name("gone")
        assert gone is not None
        for worker_id, site, registered, seen in (
            ("w-a", ids["a"], 20.0, NOW),
            ("w-a-old", ids["a"], 5.0, NOW - 100),
            ("w-b", ids["b"], 10.0, NOW),
            ("w-gone", gone.id, 1.0, NOW),
        ):
            uow.workers.add(
                models.Worker(
                    id=worker_id,
                    site_id=site,
                    state=WorkerState.ONLINE,
                    registered_at=registered,
                    last_seen_at=seen,
                )
            )
        uow.commit()

    # Execute / Assert
    with uows() as uow:
        assert uow.sites.online_names(NOW, 30) == ["b", "a"]
        assert [w.id for w in uow.workers.stale(NOW - 30)] == ["w-a-old"]
        assert uow.workers.count_online(NOW - 30) == 3
        assert uow.sites.by_folded_name("A").name == "a"  # type: ignore[union-attr]
        assert uow.sites.names() == ["a", "b", "gone"]


def test_the_newest_events_and_strategy_state(uows: Callable[[], UnitOfWork]) -> None:
    # Prepare
    _seed(uows)
    with uows() as uow:
        for kind in ("round.opened", "experiment.waiting", "task.leased"):
            uow.events.add(models.Event(kind=kind, experiment_id="exp-1"))
        for number in (1, 2):
            uow.versions.add_strategy_state(
                models.StrategyState(
                    experiment_id="exp-1", stage_index=1, round=number, scalars={"r": number}
                )
            )
        uow.commit()

    # Execute / Assert
    with uows() as uow:
        latest = uow.events.latest_of_kinds("exp-1", ("round.opened", "experiment.waiting"))
        assert latest is not None and latest.kind == "experiment.waiting"
        assert [e.kind for e in uow.events.after(0, experiment_id="exp-1", limit=2)] == [
            "round.opened",
            "experiment.waiting",
        ]
        before = uow.versions.strategy_state_before("exp-1", 1, 3)
        assert before is not None and before.round == 2


def test_wakeups_reach_the_hook_only_after_a_commit(uows: Callable[[], UnitOfWork]) -> None:
    # Prepare
    heard: list[Wakeups] = []
    uows.after_commit = heard.append  # type: ignore[attr-defined]

    # Execute
    with uows() as uow:
        uow.wake(sites=[1])  # rolled back: nobody hears it
    with uows() as uow:
        uow.wake(sites=[2])
        uow.wake(all_sites=True)
        uow.commit()

    # Assert
    assert heard == [Wakeups(frozenset({2}), all_sites=True)]


def test_online_site_ids_and_what_a_collector_must_keep(uows: Callable[[], UnitOfWork]) -> None:
    # Prepare: a has an online worker, b only an offline one; a pruned version, a kept one sharing
    # a side file with it, three server states of one stage
    ids = _seed(uows)
    with uows() as uow:
        uow.workers.add(models.Worker(id="w-a", site_id=ids["a"], state=WorkerState.ONLINE))
        uow.workers.add(models.Worker(id="w-b", site_id=ids["b"], state=WorkerState.OFFLINE))
        uow.versions.add(
            models.ModelVersion(
                id="mv-old",
                experiment_id="exp-1",
                version=1,
                blob_digest="old",
                files={"cfg": "shared", "x": "old-only"},
                pruned_at=NOW,
            )
        )
        uow.versions.add(
            models.ModelVersion(
                id="mv-new", experiment_id="exp-1", version=2, blob_digest="new", files={"cfg": "shared"}
            )
        )
        for number in (1, 2, 3):
            uow.versions.add_strategy_state(
                models.StrategyState(
                    experiment_id="exp-1", stage_index=1, round=number, blob_digest=f"s{number}"
                )
            )
        uow.commit()

    # Execute
    with uows() as uow:
        online = uow.workers.online_site_ids([ids["a"], ids["b"]])
        would = uow.versions.prune_strategy_states(dry_run=True)
    with uows() as uow:
        dropped = uow.versions.prune_strategy_states()
        uow.commit()
    with uows() as uow:
        referenced = uow.versions.referenced_blob_digests()
        kept_state = uow.versions.strategy_state_before("exp-1", 1, 9)
        kept_round = kept_state.round if kept_state is not None else None

    # Assert
    assert online == {ids["a"]}
    assert (would, dropped) == (2, 2) and kept_round == 3
    assert referenced == {"new", "shared", "s3"}
