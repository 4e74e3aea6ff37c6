"""A whole experiment over real gRPC: INIT, then 3 rounds x 3 workers, exact weighted means."""

from __future__ import annotations

import numpy as np

from tests.support.cluster import Cluster, spec_yaml
from tests.support.flow import (
    assert_arrays_close,
    committed_version,
    initialize,
    pull_train,
    train_update,
    weighted_mean,
)
from tests.support.waiting import wait_for


def test_three_rounds_of_three_workers_commit_the_exact_weighted_mean(cluster: Cluster) -> None:
    # Prepare
    admin = cluster.admin()
    workers = [cluster.worker(site) for site in ("a", "b", "c")]
    experiment_id, current = initialize(admin, workers, spec_yaml(rounds=3, min_sites=3))
    rng = np.random.default_rng(1)

    for round_number in (1, 2, 3):
        # Execute
        pushed = []
        for worker in workers:
            task = pull_train(worker)
            assert task.round == round_number
            assert_arrays_close(worker.fetch(task.model_version_id), current)
            arrays = train_update(worker, task, rng)
            num_examples = int(rng.integers(1, 500))
            worker.push(
                task.task_id, arrays, num_examples=num_examples, metrics={"loss": float(num_examples)}
            )
            pushed.append((arrays, num_examples))
        version_id = committed_version(admin, experiment_id, round_number)

        # Assert
        expected = weighted_mean(pushed)
        assert_arrays_close(workers[0].fetch(version_id), expected)
        current = expected
        (info,) = [r for r in admin.rounds(experiment_id) if r.round == round_number]
        by_site = {u.site: u for u in info.site_updates}
        assert sorted(by_site) == ["a", "b", "c"]
        for worker, (_, num_examples) in zip(workers, pushed, strict=True):
            update = by_site[worker.site]
            assert update.num_examples == num_examples and update.weight == num_examples
            assert update.metrics["loss"] == float(num_examples) and update.state == "folded"
            assert update.received_bytes > 0

    experiment = wait_for(lambda: (e := admin.experiment(experiment_id)).state == "completed" and e)
    assert experiment.current_round == 3
    rounds = admin.rounds(experiment_id)
    assert [r.state for r in rounds] == ["committed"] * 3
    assert all(r.updates_received == 3 and r.tasks_total == 3 for r in rounds)
