"""Every bad PushUpdate gets a clear status and leaves the round unchanged."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np

from fedtune.tensorstream.encoder import manifest_for_arrays
from fedtune.tensorstream.manifest import Manifest
from tests.support.cluster import Cluster, spec_yaml
from tests.support.flow import (
    assert_arrays_close,
    committed_version,
    initialize,
    pull_train,
    submit,
    train_update,
    weighted_mean,
)
from tests.support.waiting import wait_for
from tests.support.wire import expect_error, header_only, push_raw, raw_chunk


def test_bad_updates_are_rejected_and_the_round_is_unchanged(cluster_factory: Callable[..., Cluster]) -> None:
    # Prepare
    cluster = cluster_factory(max_chunk_bytes=1024)
    admin = cluster.admin()
    a, b = cluster.worker("a"), cluster.worker("b")
    experiment_id, _ = initialize(admin, [a, b], spec_yaml(rounds=1, min_sites=2, sites=["a", "b"]))
    rng = np.random.default_rng(5)
    task_a = pull_train(a)
    good_a = train_update(a, task_a, rng)
    manifest = manifest_for_arrays(good_a)
    names = list(good_a)
    first = good_a[names[0]].tobytes()

    wrong_shape = dict(good_a, **{names[1]: np.zeros((3, 3), np.float32)})
    with_nan = {k: v.copy() for k, v in good_a.items()}
    with_nan[names[2]][1] = np.nan
    lying = Manifest(manifest.tensors, "0" * 64)
    invalid, lost = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DATA_LOSS

    # Execute + Assert: each bad input
    expect_error(lambda: a.push("task-nope", good_a, num_examples=3), grpc.StatusCode.NOT_FOUND, "no task")
    task_b = pull_train(b)
    expect_error(
        lambda: a.push(task_b.task_id, good_a, num_examples=3),
        grpc.StatusCode.PERMISSION_DENIED,
        "another site",
    )
    expect_error(
        lambda: a.push(task_a.task_id, wrong_shape, num_examples=3),
        invalid,
        f"tensor {names[1]!r} has shape [3, 3]",
    )
    expect_error(
        lambda: a.push(task_a.task_id, {k: good_a[k] for k in names[:2]}, num_examples=3),
        invalid,
        "2 tensors",
    )
    expect_error(lambda: a.push(task_a.task_id, good_a, num_examples=0), invalid, "num_examples must be > 0")
    expect_error(lambda: a.push(task_a.task_id, with_nan, num_examples=3), invalid, "NaN or Inf")
    expect_error(
        push_raw(a, [header_only(task_a.task_id, manifest), raw_chunk(0, 0, b"\0" * 2048)]),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "exceeds 1024",
    )
    expect_error(
        push_raw(a, [header_only(task_a.task_id, manifest), raw_chunk(9, 0, first)]),
        invalid,
        "tensor index 9",
    )
    expect_error(
        push_raw(a, [header_only(task_a.task_id, manifest), raw_chunk(0, 4, first[:8])]),
        invalid,
        "expected tensor 0 offset 0",
    )
    expect_error(
        push_raw(a, [header_only(task_a.task_id, manifest), raw_chunk(0, 0, first, crc=1)]),
        lost,
        "crc32 mismatch",
    )
    expect_error(lambda: a.push(task_a.task_id, good_a, num_examples=3, manifest=lying), lost, "sha256")
    expect_error(
        lambda: a.push(task_a.task_id, good_a, num_examples=3, stop_after_chunks=1),
        lost,
        "before the update was complete",
    )
    expect_error(
        push_raw(a, [raw_chunk(0, 0, first)]), invalid, "first PushUpdate message must be the header"
    )

    (rnd,) = admin.rounds(experiment_id)
    assert rnd.state == "collecting" and rnd.updates_received == 0

    # Execute: the honest updates still make the exact mean; a replay is refused
    good_b = train_update(b, task_b, rng)
    a.push(task_a.task_id, good_a, num_examples=10)
    b.push(task_b.task_id, good_b, num_examples=30)
    version_id = committed_version(admin, experiment_id, 1)
    assert_arrays_close(a.fetch(version_id), weighted_mean([(good_a, 10), (good_b, 30)]))
    expect_error(
        lambda: a.push(task_a.task_id, good_a, num_examples=10), grpc.StatusCode.FAILED_PRECONDITION, "replay"
    )


def test_push_for_a_task_not_leased_is_refused(cluster: Cluster) -> None:
    # Prepare
    admin = cluster.admin()
    a, b = cluster.worker("a"), cluster.worker("b")
    experiment_id, arrays = initialize(admin, [a, b], spec_yaml(rounds=1, min_sites=2, sites=["a", "b"]))
    task_b = pull_train(b)
    b.report(task_b.task_id, ok=False, error="out of memory")

    # Execute + Assert
    expect_error(
        lambda: b.push(task_b.task_id, arrays, num_examples=3),
        grpc.StatusCode.FAILED_PRECONDITION,
        "not leased",
    )


def test_update_larger_than_max_update_bytes_is_refused(cluster_factory: Callable[..., Cluster]) -> None:
    # Prepare
    cluster = cluster_factory(max_update_bytes=100)
    admin = cluster.admin()
    a = cluster.worker("a")
    submit(admin, spec_yaml(min_sites=1))
    task = wait_for(lambda: a.pull(wait_seconds=1.0))

    # Execute + Assert
    expect_error(lambda: a.do_init(task), grpc.StatusCode.RESOURCE_EXHAUSTED, "max_update_bytes")
