"""A strategy that refuses one site's update rejects that update only; the round goes on with the others.

Before: the update was committed as verified (task done) before the strategy saw it, so when the strategy
refused it (fedavg_adaptive weighting by a metric the site did not report) every later fold re-read it:
both sites were told INVALID_ARGUMENT, the round failed with "could not start aggregation" and the
experiment failed. Now the strategy's check runs before the update is committed.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from fedtune.v1 import admin_pb2
from tests.support.cluster import Cluster, spec_yaml
from tests.support.flow import committed_version, initialize, pull_train, train_update
from tests.support.waiting import wait_for


def _metric_spec(min_sites: int) -> str:
    return spec_yaml(
        rounds=1,
        min_sites=min_sites,
        sites=["a", "b"],
        strategy="fedavg_adaptive",
        strategy_options={"signals": ["metric"]},  # type: ignore[dict-item]
    )


def test_a_refused_update_is_rejected_alone_and_the_round_commits_with_the_others(cluster: Cluster) -> None:
    # Prepare: two sites, fedavg_adaptive weighting by eval_accuracy; a round needs one update
    admin = cluster.admin()
    workers = {site: cluster.worker(site) for site in ("a", "b")}
    experiment_id, _ = initialize(admin, list(workers.values()), _metric_spec(min_sites=1))
    rng = np.random.default_rng(5)
    tasks = {site: pull_train(worker) for site, worker in workers.items()}

    # Execute: site a reports no metric, site b does
    with pytest.raises(grpc.RpcError) as refused:
        workers["a"].push(tasks["a"].task_id, train_update(workers["a"], tasks["a"], rng), num_examples=10)
    accepted = workers["b"].push(
        tasks["b"].task_id,
        train_update(workers["b"], tasks["b"], rng),
        num_examples=20,
        metrics={"eval_accuracy": 0.8},
    )
    version_id = committed_version(admin, experiment_id, 1)

    # Assert: only a was refused, saying why; the round committed with b's update alone
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "eval_accuracy" in str(refused.value.details()) and "missing_metric_value" in str(
        refused.value.details()
    )
    assert accepted.update_id
    (rnd,) = admin.rounds(experiment_id)
    assert rnd.model_version_id == version_id
    assert [(u.site, u.num_examples) for u in rnd.site_updates] == [("b", 20)]
    assert wait_for(lambda: admin.experiment(experiment_id).state == "completed")
    stream = admin.stub.WatchEvents(
        admin_pb2.WatchEventsRequest(experiment_id=experiment_id), metadata=admin.metadata, timeout=10
    )
    events = [e for e in stream if e.kind == "update.rejected"]
    assert len(events) == 1 and "eval_accuracy" in events[0].message
    # a replay of the refused update is refused as closed, not folded
    with pytest.raises(grpc.RpcError) as replay:
        workers["a"].push(tasks["a"].task_id, train_update(workers["a"], tasks["a"], rng), num_examples=10)
    assert replay.value.code() is grpc.StatusCode.FAILED_PRECONDITION


def test_a_round_short_of_min_sites_after_a_rejection_fails_saying_so(cluster: Cluster) -> None:
    # Prepare: both sites are needed
    admin = cluster.admin()
    workers = {site: cluster.worker(site) for site in ("a", "b")}
    experiment_id, _ = initialize(admin, list(workers.values()), _metric_spec(min_sites=2))
    rng = np.random.default_rng(6)
    tasks = {site: pull_train(worker) for site, worker in workers.items()}

    # Execute
    with pytest.raises(grpc.RpcError):
        workers["a"].push(tasks["a"].task_id, train_update(workers["a"], tasks["a"], rng), num_examples=10)
    workers["b"].push(
        tasks["b"].task_id,
        train_update(workers["b"], tasks["b"], rng),
        num_examples=20,
        metrics={"eval_accuracy": 0.8},
    )

    # Assert: the round ends with 1 update against min_sites=2 (not "could not start aggregation")
    def failed_round() -> str:
        rounds = admin.rounds(experiment_id)
        return rounds[0].reason if rounds and rounds[0].state == "failed" else ""

    reason = wait_for(failed_round)
    assert "with 1 update(s); the stage needs min_sites=2" in reason, reason
