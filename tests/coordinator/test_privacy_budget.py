"""Site-level DP through the real coordinator (real gRPC, SQLite/PostgreSQL; fake workers: training is
not the point): uniform weights, Gaussian noise on the sum, the ledger in each round, and
`privacy.dp.target_epsilon` ending the experiment cleanly, shown by `fedtune admin` (decision 36)."""

from __future__ import annotations

import numpy as np
import pytest

from fedtune.privacy_accounting import dp_epsilon
from fedtune.v1 import worker_pb2
from tests.admin.live_coordinator import Cli
from tests.support.cluster import Cluster, spec_yaml
from tests.support.fake_worker import FakeWorker
from tests.support.flow import committed_version, initialize, pull_train
from tests.support.waiting import wait_for

Z, C = 2.0, 0.5


def _dp_spec(rounds: int, target: float, min_sites: int = 3) -> str:
    dp = f"level: site, noise_multiplier: {Z}, clip_norm: {C}, target_epsilon: {target}, delta: 1.0e-5"
    privacy = f"privacy:\n  dp: {{{dp}}}\n"
    return spec_yaml(rounds=rounds, min_sites=min_sites) + privacy


def test_site_level_rounds_add_noise_to_the_sum_and_stop_at_the_budget(cluster: Cluster) -> None:
    # Prepare: a budget that two rounds of all three sites (q = 1) fit and a third would pass
    two, three = dp_epsilon(Z, 1.0, 2), dp_epsilon(Z, 1.0, 3)
    admin = cluster.admin()
    workers = [cluster.worker(site) for site in ("a", "b", "c")]
    experiment_id, current = initialize(admin, workers, _dp_spec(rounds=5, target=(two + three) / 2))

    for round_number in (1, 2):
        # Execute: every site sends the global back (a zero update), with very different example counts
        for index, worker in enumerate(workers):
            task = pull_train(worker)
            worker.push(task.task_id, worker.fetch(task.model_version_id), num_examples=10 ** (index + 1))
        version_id = committed_version(admin, experiment_id, round_number)
        new = workers[0].fetch(version_id)

        # Assert: the mean of three zero updates plus N(0, (zC)^2) / 3 on every element
        noise = np.concatenate([(new[name] - current[name]).ravel() for name in current])
        assert 0.7 < float(noise.std()) / (Z * C / 3) < 1.3  # 135 elements: a loose statistical bound
        assert abs(float(noise.mean())) < 4 * Z * C / 3 / np.sqrt(noise.size)
        (info,) = [r for r in admin.rounds(experiment_id) if r.round == round_number]
        assert [u.weight for u in info.site_updates] == [1.0, 1.0, 1.0]  # uniform, not 10/100/1000
        assert info.metrics["privacy.sampling_rate"] == 1.0 and info.metrics["privacy.noise_multiplier"] == Z
        assert info.metrics["privacy.epsilon"] == pytest.approx(dp_epsilon(Z, 1.0, round_number))
        assert info.metrics["strategy.sum_noise_std"] == pytest.approx(Z * C)
        current = new

    # Assert: no third round; the experiment completed on its budget and says so
    experiment = wait_for(lambda: (e := admin.experiment(experiment_id)).state == "completed" and e)
    assert [r.round for r in admin.rounds(experiment_id)] == [1, 2]
    privacy = experiment.privacy
    assert privacy.level == "site" and privacy.rounds == 2 and privacy.delta == 1e-5
    assert privacy.epsilon == pytest.approx(two)
    assert "privacy budget is spent" in privacy.budget_spent and "target_epsilon" in privacy.budget_spent

    cli = Cli(cluster.target, "admin-secret")
    shown = cli.ok("experiment", "show", experiment_id).stdout
    assert f"epsilon {two:.3f} of target" in shown and "delta 1e-05" in shown
    assert "budget spent" in shown and "privacy budget is spent" in shown
    rounds = cli.ok("rounds", experiment_id).stdout
    assert "(EPS, DELTA)" in rounds and f"({two:.3f}, 1e-05)" in rounds
    events = cli.ok("watch", experiment_id, "--no-follow").stdout
    assert "privacy.budget_spent" in events


def test_the_ledger_counts_the_selection_fraction_and_survives_a_restart(cluster: Cluster) -> None:
    # Prepare: one of three sites per round (q = 1/3)
    admin = cluster.admin()
    workers = [cluster.worker(site) for site in ("a", "b", "c")]
    spec = _dp_spec(rounds=1, target=100.0, min_sites=1).replace(
        "min_sites: 1", "min_sites: 1\n      mode: fraction\n      fraction: 0.3"
    )
    experiment_id, _ = initialize(admin, workers, spec)

    def train_task() -> tuple[FakeWorker, worker_pb2.Task] | None:
        for worker in workers:
            task = worker.pull(wait_seconds=0.2)
            if task is not None:
                return worker, task
        return None

    # Execute
    worker, task = wait_for(train_task)
    worker.push(task.task_id, worker.fetch(task.model_version_id), num_examples=5)
    committed_version(admin, experiment_id, 1)
    cluster.restart()  # the ledger is rebuilt from the stored rounds
    admin = cluster.admin()

    # Assert
    experiment = wait_for(lambda: (e := admin.experiment(experiment_id)).state == "completed" and e)
    assert experiment.privacy.rounds == 1 and experiment.privacy.budget_spent == ""
    assert experiment.privacy.epsilon == pytest.approx(dp_epsilon(Z, 1 / 3, 1))
    assert experiment.privacy.epsilon < dp_epsilon(Z, 1.0, 1)
