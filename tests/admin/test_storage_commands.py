"""`fedtune admin storage usage|gc`, `models pin|unpin` and what `rounds` says an open round waits for,
against the real coordinator (in-process, real gRPC, SQLite/PostgreSQL), decision 33."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.admin.live_coordinator import Cli
from tests.support.cluster import ADMIN_TOKEN, Cluster, make_settings, spec_yaml
from tests.support.flow import committed_version, initialize, pull_train, train_update


@pytest.fixture
def live(tmp_path: Path, database_url: str) -> Iterator[tuple[Cluster, Cli]]:
    settings = make_settings(tmp_path / "data", database_url, retention_keep_last=1, gc_grace_seconds=0)
    cluster = Cluster(settings)
    try:
        yield cluster, Cli(cluster.target, ADMIN_TOKEN)
    finally:
        cluster.stop()


def test_storage_commands_show_usage_collect_and_pin(live: tuple[Cluster, Cli]) -> None:
    # Prepare: 3 of 4 rounds committed (versions 0..3); round 4 open, its task leased by site a
    cluster, cli = live
    admin, a = cluster.admin(), cluster.worker("a")
    experiment_id, _ = initialize(admin, [a], spec_yaml(rounds=4, min_sites=1, sites=["a"]))
    rng = np.random.default_rng(4)
    for number in (1, 2, 3):
        task = pull_train(a)
        a.push(task.task_id, train_update(a, task, rng), num_examples=2)
        committed_version(admin, experiment_id, number)
    pull_train(a)
    versions = [m["version_id"] for m in cli.json("models", "list", "--experiment", experiment_id)["models"]]
    cli.ok("models", "pin", versions[1], "--reason", "baseline")

    # Execute
    rounds = cli.json("rounds", experiment_id)["rounds"]
    rounds_human = cli.ok("rounds", experiment_id).stdout
    before = cli.json("storage", "usage")
    dry = cli.ok("storage", "gc", "--dry-run").stdout
    report = cli.json("storage", "gc")
    after = cli.json("storage", "usage")
    models = cli.json("models", "list", "--experiment", experiment_id)["models"]
    cli.ok("models", "unpin", versions[1])
    unpinned = cli.json("storage", "gc")

    # Assert: the open round waits for a, and says why
    assert rounds[-1]["state"] == "collecting" and rounds[-1]["waiting_for"] == ["a"]
    assert "0 update(s) in, min_sites=1; waiting for 1 site(s)" in rounds[-1]["waiting_reason"]
    assert "WAITING FOR" in rounds_human
    # keep_last=1 keeps version 3 (the latest and round 4's base) and the pinned version 1
    assert before["versions_to_prune"] == 2 and before["retention_keep_last"] == 1
    assert "dry run" in dry
    assert report["versions_pruned"] == 2 and report["blobs_deleted"] == 2
    assert after["blob_count"] == before["blob_count"] - 2 and after["versions_to_prune"] == 0
    (experiment,) = after["experiments"]
    assert experiment["versions"] == 4 and experiment["versions_pruned"] == 2
    kept = {m["version_id"]: (m.get("pinned", ""), m.get("pruned_unix", 0)) for m in models}
    assert kept[versions[1]] == ("baseline", 0) and kept[versions[0]][1] > 0
    assert unpinned["pruned_version_ids"] == [versions[1]]
