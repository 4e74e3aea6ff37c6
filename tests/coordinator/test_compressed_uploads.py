"""Compressed uploads through the real coordinator (decision 40): a round of bf16 / int8 / top-k updates
commits the weighted mean of what the sites encoded, within the encodings' error of the fp32 mean,
with fewer bytes received; malformed compressed updates are refused and the round goes on."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from fedtune.compression.codec import encode_update
from fedtune.compression.encoding import UpdateEncoding
from tests.support.cluster import Cluster, spec_yaml
from tests.support.fake_worker import FakeWorker
from tests.support.flow import (
    assert_arrays_close,
    committed_version,
    initialize,
    pull_train,
    train_update,
    weighted_mean,
)
from tests.support.waiting import wait_for
from tests.support.wire import expect_error


def _push_encoded(
    worker: FakeWorker,
    task_id: str,
    trained: dict[str, np.ndarray],
    base: dict[str, np.ndarray],
    encoding: UpdateEncoding,
    num_examples: int,
) -> tuple[dict[str, np.ndarray], int]:
    """Push `trained` in `encoding`; returns (what the coordinator should rebuild, bytes received)."""
    deltas = {n: trained[n] - base[n] for n in base}
    encoded = encode_update(deltas, encoding, topk_fraction=0.25)
    answer = worker.push(
        task_id,
        encoded.arrays,
        num_examples=num_examples,
        encoding=encoding,
        dtypes=encoded.dtypes,
        chunk_bytes=64,
    )
    return {n: base[n] + encoded.decoded[n] for n in base}, int(answer.received_bytes)


def test_a_round_of_compressed_updates_commits_within_the_encoding_error_of_fp32(cluster: Cluster) -> None:
    # Prepare
    admin = cluster.admin()
    workers = [cluster.worker(site) for site in ("a", "b", "c")]
    experiment_id, base = initialize(admin, workers, spec_yaml(rounds=1, min_sites=3))
    rng = np.random.default_rng(3)
    encodings = [UpdateEncoding("bf16"), UpdateEncoding("int8", 16), UpdateEncoding("int8", 8, True)]
    fp32_bytes = sum(a.nbytes for a in base.values())

    # Execute: each site trains (base + a small step) and sends in its own encoding
    sent, exact, received = [], [], {}
    for worker, encoding in zip(workers, encodings, strict=True):
        task = pull_train(worker)
        step = train_update(worker, task, rng)
        trained = {n: base[n] + 0.05 * step[n] for n in base}
        num_examples = int(rng.integers(1, 100))
        rebuilt, received[worker.site] = _push_encoded(
            worker, task.task_id, trained, base, encoding, num_examples
        )
        sent.append((rebuilt, num_examples))
        exact.append((trained, num_examples))
    version_id = committed_version(admin, experiment_id, 1)

    # Assert: the committed version is the weighted mean of the decoded updates ...
    committed = workers[0].fetch(version_id)
    assert_arrays_close(committed, weighted_mean(sent))
    # ... and within the encodings' error of the fp32 mean (top-k drops 75 % of a 0.05-sized step)
    fp32_mean = weighted_mean(exact)
    for name in base:
        assert np.abs(committed[name] - fp32_mean[name]).max() < 0.05 * 4
    assert received["a"] == fp32_bytes // 2  # bf16
    assert fp32_bytes // 4 < received["b"] < fp32_bytes // 3  # int8 codes + a scale per 16 values
    assert received["c"] < fp32_bytes // 2  # 25 % of the entries as int32 index + int8 value
    (info,) = admin.rounds(experiment_id)
    assert {u.site: u.received_bytes for u in info.site_updates} == received


def test_malformed_compressed_updates_are_refused_and_the_round_goes_on(cluster: Cluster) -> None:
    # Prepare
    admin = cluster.admin()
    a, b = cluster.worker("a"), cluster.worker("b")
    experiment_id, base = initialize(admin, [a, b], spec_yaml(rounds=1, min_sites=2, sites=["a", "b"]))
    rng = np.random.default_rng(4)
    task_a, task_b = pull_train(a), pull_train(b)
    trained = {n: base[n] + 0.01 * v for n, v in train_update(a, task_a, rng).items()}
    encoding = UpdateEncoding("fp32", 0, True)
    encoded = encode_update({n: trained[n] - base[n] for n in base}, encoding, topk_fraction=0.5)
    name = next(iter(base)) + "#idx"
    reversed_indices = dict(encoded.arrays, **{name: encoded.arrays[name][::-1].copy()})
    invalid = grpc.StatusCode.INVALID_ARGUMENT

    # Execute + Assert: indices out of order, named
    expect_error(
        lambda: a.push(task_a.task_id, reversed_indices, num_examples=3, encoding=encoding),
        invalid,
        f"manifest tensor {name!r}: indices must be strictly increasing",
    )
    assert not a.upload_status(task_a.task_id).in_progress  # the refused upload left nothing
    # a dense int8 layout declared as top-k: the header is refused before any chunk
    dense = encode_update({n: trained[n] - base[n] for n in base}, UpdateEncoding("int8", 16))
    expect_error(
        lambda: a.push(task_a.task_id, dense.arrays, num_examples=3, encoding=encoding),
        invalid,
        "a top-k update needs a 1-D int32 tensor",
    )
    # an unknown encoding
    expect_error(
        lambda: a.push(task_a.task_id, encoded.arrays, num_examples=3, encoding=UpdateEncoding("int4")),  # type: ignore[arg-type]
        invalid,
        "encoding.values: 'int4' is not one of fp32, bf16, int8",
    )

    # the same site then sends a good one; with b's plain update the round commits
    a.push(task_a.task_id, encoded.arrays, num_examples=3, encoding=encoding)
    plain = {n: base[n] + 0.01 * v for n, v in train_update(b, task_b, rng).items()}
    b.push(task_b.task_id, plain, num_examples=1)
    version_id = committed_version(admin, experiment_id, 1)
    rebuilt = {n: base[n] + encoded.decoded[n] for n in base}
    assert_arrays_close(a.fetch(version_id), weighted_mean([(rebuilt, 3), (plain, 1)]))


def test_an_init_update_cannot_be_compressed(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    cluster = cluster_factory()
    admin = cluster.admin()
    a = cluster.worker("a")
    from tests.support.fake_worker import initial_arrays
    from tests.support.flow import submit

    submit(admin, spec_yaml(rounds=1, min_sites=1, sites=["a"]))
    task = wait_for(lambda: a.pull(wait_seconds=0.5))

    # Execute / Assert
    expect_error(
        lambda: a.push(task.task_id, initial_arrays(), num_examples=0, encoding=UpdateEncoding("bf16")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "encoding: an INIT update defines the stage's layout",
    )


def test_a_broken_compressed_upload_resumes_and_a_restarted_coordinator_refolds_it(
    cluster: Cluster,
) -> None:
    # Prepare
    admin = cluster.admin()
    a, b = cluster.worker("a"), cluster.worker("b")
    experiment_id, base = initialize(admin, [a, b], spec_yaml(rounds=1, min_sites=2, sites=["a", "b"]))
    rng = np.random.default_rng(6)
    task_a, task_b = pull_train(a), pull_train(b)
    trained = {n: base[n] + 0.01 * v for n, v in train_update(a, task_a, rng).items()}
    encoding = UpdateEncoding("int8", 8, True)
    encoded = encode_update({n: trained[n] - base[n] for n in base}, encoding, topk_fraction=0.5)
    options = {"num_examples": 5, "encoding": encoding, "dtypes": encoded.dtypes, "chunk_bytes": 16}

    # Execute: the stream breaks after 3 chunks (the client closes it), then resumes where the
    # coordinator stopped; then the coordinator restarts before b's update closes the round
    with pytest.raises(grpc.RpcError):
        a.stub.PushUpdate(
            a.push_requests(task_a.task_id, encoded.arrays, stop_after_chunks=3, **options),  # type: ignore[arg-type]
            metadata=a.metadata,
            timeout=10,
        )
    status = wait_for(lambda: (s := a.upload_status(task_a.task_id)).in_progress and s)
    assert (status.next_tensor, status.next_offset) > (0, 0)
    a.push(task_a.task_id, encoded.arrays, resume_from=(status.next_tensor, status.next_offset), **options)
    cluster.restart()
    admin = cluster.admin()
    a, b = cluster.worker("a", register=False), cluster.worker("b", register=False)  # same workers
    plain = {n: base[n] + 0.01 * v for n, v in train_update(b, task_b, rng).items()}
    b.push(task_b.task_id, plain, num_examples=2)
    version_id = committed_version(admin, experiment_id, 1)

    # Assert: the re-folded decoded spool gives the same mean
    rebuilt = {n: base[n] + encoded.decoded[n] for n in base}
    assert_arrays_close(a.fetch(version_id), weighted_mean([(rebuilt, 5), (plain, 2)]))
