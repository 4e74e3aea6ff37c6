"""Secure aggregation through the real round protocol: a coordinator over gRPC on loopback, with its
registry (SQLite, and PostgreSQL when configured), and scripted sites that answer each step with the
kernel the worker daemon runs (tests/support/secagg_site.py).

Pinned here: the committed version is the weighted mean of the sites' clipped updates within the
quantization bound; what the coordinator spools is masked, never the update; a site that dies during
its upload is unmasked from its neighbours' shares; a coordinator restarted mid-round (between
uploads, and again between reveals) finishes the round with the same result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedtune.secagg.quantize import QuantizationParams, mean_error_bound
from fedtune.serde import TaskRecord
from fedtune.tensorstream.safetensors_file import read_arrays
from tests.support.cluster import Cluster, spec_yaml
from tests.support.flow import initialize
from tests.support.secagg_site import SecAggFakeSite
from tests.support.waiting import wait_for

TOKENS = {"a": "token-a", "b": "token-b", "c": "token-c", "d": "token-d"}
MAX_WEIGHT = 200.0
CLIP = 8.0
Arrays = dict[str, np.ndarray]


def secagg_spec(deadline: float = 60.0, strategy: str = "fedavg") -> str:
    return spec_yaml(rounds=1, min_sites=3, deadline=deadline, strategy=strategy) + (
        f"privacy: {{secure_aggregation: true, secagg: {{clip_range: {CLIP}, max_weight: {MAX_WEIGHT}}}}}\n"
    )


def start(cluster_factory: Callable[..., Cluster], names: str, **settings: object) -> Cluster:
    return cluster_factory(sites=",".join(f"{n}:{TOKENS[n]}" for n in names), **settings)


def connect(cluster: Cluster, names: str, state_root: Path) -> dict[str, SecAggFakeSite]:
    return {n: SecAggFakeSite(cluster.worker(n, TOKENS[n]), state_root / n) for n in names}


def until_train(sites: Mapping[str, SecAggFakeSite], timeout: float = 20.0) -> dict[str, TaskRecord]:
    """Answer advertise and share steps until every site holds its train task."""
    trains: dict[str, TaskRecord] = {}

    def step() -> bool:
        for name, site in sites.items():
            if name not in trains and (task := site.pull(0.05)) is not None:
                if task.kind == "train":
                    trains[name] = task
                else:
                    site.answer(task)
        return len(trains) == len(sites)

    wait_for(step, timeout=timeout, what="every site's masked train task")
    return trains


def until_committed(
    cluster: Cluster, experiment_id: str, sites: Mapping[str, SecAggFakeSite], timeout: float = 30.0
) -> str:
    admin = cluster.admin()

    def step() -> str | None:
        for site in sites.values():
            if (task := site.pull(0.05)) is not None:
                assert task.kind == "secagg_unmask", task.kind
                site.answer(task)
        rnd = admin.rounds(experiment_id)[-1]
        assert rnd.state != "failed", rnd.reason
        return rnd.model_version_id if rnd.state == "committed" else None

    return wait_for(step, timeout=timeout, what="the secure round's commit")


def updates_for(names: str, seed: int = 3) -> dict[str, tuple[Arrays, int]]:
    rng = np.random.default_rng(seed)
    out = {}
    for name in names:
        arrays = {
            "layer.0.lora_A.weight": rng.standard_normal((4, 16)).astype(np.float32),
            "layer.0.lora_B.weight": rng.standard_normal((16, 4)).astype(np.float32),
            "layer.1.bias": (rng.standard_normal((7,)) * 6).astype(np.float32),  # some beyond the clip
        }
        out[name] = (arrays, int(rng.integers(5, 200)))
    return out


def assert_weighted_mean(got: Arrays, contributed: Mapping[str, tuple[Arrays, int]], num_sites: int) -> None:
    """The committed tensors against the plain weighted mean of the clipped updates, within the bound."""
    weight_sum = float(sum(n for _, n in contributed.values()))
    params = QuantizationParams(clip_range=CLIP, max_weight=MAX_WEIGHT, max_sites=num_sites)
    bound = mean_error_bound(params, weight_sum, len(contributed))
    for name in got:
        want = sum(np.clip(a[name].astype(np.float64), -CLIP, CLIP) * n for a, n in contributed.values())
        error = float(np.abs(got[name] - want / weight_sum).max())
        assert error <= bound, (name, error, bound)
    assert bound < 1e-4  # and the bound itself is tight enough to mean something


def version_arrays(site: SecAggFakeSite, version_id: str) -> Arrays:
    return site.worker.fetch(version_id)


def test_a_secure_round_commits_the_weighted_mean_and_the_coordinator_holds_only_masked_updates(
    cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = start(cluster_factory, "abcd")
    sites = connect(cluster, "abcd", tmp_path / "sites")
    experiment_id, _ = initialize(cluster.admin(), [s.worker for s in sites.values()], secagg_spec())
    updates = updates_for("abcd")

    trains = until_train(sites)
    for name, task in trains.items():
        assert task.secagg is not None and len(task.secagg.sites) == 4
        sites[name].push_masked(task, *updates[name])

    round_id = trains["a"].secagg.round_id  # type: ignore[union-attr]
    spool = cluster.settings.data_dir / "spool" / round_id
    for name, task in trains.items():  # what the coordinator stored: masked, nothing like the update
        stored = read_arrays(spool / f"{task.task_id}.safetensors")
        assert list(stored) == ["secagg.masked"] and stored["secagg.masked"].dtype == np.int32
        arrays, n = updates[name]
        plain = np.concatenate([arrays[k].reshape(-1) for k in sorted(arrays)])
        step = MAX_WEIGHT * CLIP / (2**31 // 4 - 1)
        decoded = stored["secagg.masked"][1:].astype(np.float64) * step / n
        assert np.abs(decoded - plain).mean() > 1.0
    version_id = until_committed(cluster, experiment_id, sites)

    assert_weighted_mean(version_arrays(sites["a"], version_id), updates, num_sites=4)
    rnd = cluster.admin().rounds(experiment_id)[-1]
    assert rnd.metrics["strategy.secagg_sites"] == 4.0


def test_a_site_that_dies_during_its_upload_is_unmasked_from_its_neighbours_shares(
    cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = start(cluster_factory, "abcd")
    sites = connect(cluster, "abcd", tmp_path / "sites")
    experiment_id, _ = initialize(
        cluster.admin(), [s.worker for s in sites.values()], secagg_spec(deadline=6.0)
    )
    updates = updates_for("abcd", seed=5)
    trains = until_train(sites)

    for name in "abc":
        sites[name].push_masked(trains[name], *updates[name])
    with pytest.raises(grpc.RpcError):  # d sends part of its masked update, then dies
        sites["d"].push_masked(trains["d"], *updates["d"], chunk_bytes=256, stop_after_chunks=2)
    survivors = {name: sites[name] for name in "abc"}
    version_id = until_committed(cluster, experiment_id, survivors)

    assert_weighted_mean(version_arrays(sites["a"], version_id), {n: updates[n] for n in "abc"}, num_sites=4)


def test_a_coordinator_restarted_mid_round_finishes_it(
    cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = start(cluster_factory, "abc")
    sites = connect(cluster, "abc", tmp_path / "sites")
    experiment_id, _ = initialize(cluster.admin(), [s.worker for s in sites.values()], secagg_spec())
    updates = updates_for("abc", seed=9)
    trains = until_train(sites)
    sites["a"].push_masked(trains["a"], *updates["a"])
    sites["b"].push_masked(trains["b"], *updates["b"])

    cluster.restart()  # keys, boxes and two masked updates are in the registry and the spool only
    sites = connect(cluster, "abc", tmp_path / "sites")  # the same site state, new workers
    task = wait_for(lambda: sites["c"].pull(0.2), what="c's train task again")
    assert task.kind == "train"
    sites["c"].push_masked(task, *updates["c"])
    first = wait_for(lambda: sites["a"].pull(0.2), what="a's unmask task")
    sites["a"].answer(first)

    cluster.restart()  # and once more with one site's shares revealed
    sites = connect(cluster, "abc", tmp_path / "sites")
    version_id = until_committed(cluster, experiment_id, sites)

    assert_weighted_mean(version_arrays(sites["b"], version_id), updates, num_sites=3)


def test_a_plain_update_in_a_secure_round_is_refused(
    cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = start(cluster_factory, "abc")
    sites = connect(cluster, "abc", tmp_path / "sites")
    initialize(cluster.admin(), [s.worker for s in sites.values()], secagg_spec())
    trains = until_train(sites)
    arrays, n = updates_for("a")["a"]

    with pytest.raises(grpc.RpcError) as refused:
        sites["a"].worker.push(trains["a"].task_id, arrays, num_examples=n)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "masked layout (secure aggregation)" in (refused.value.details() or "")


def test_a_secure_experiment_with_median_is_refused_over_grpc(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = start(cluster_factory, "abc")
    with pytest.raises(grpc.RpcError) as refused:
        initialize(cluster.admin(), [], secagg_spec(strategy="median"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "median needs each site's own update" in (refused.value.details() or "")
