"""A whole round through the kernel: the unmasked mean equals the plain weighted mean; dropouts recover
up to the threshold; beyond it, or with a wrong share, the round fails cleanly."""

from __future__ import annotations

import numpy as np
import pytest

from fedtune.errors import FedtuneError
from fedtune.secagg.dealing import deal_shares, open_received_shares
from fedtune.secagg.graph import choose_graph_params, neighbour_graph
from fedtune.secagg.keys import SiteSecrets, round_context
from fedtune.secagg.local_round import run_local_round
from fedtune.secagg.quantize import QuantizationParams, mean_error_bound
from fedtune.secagg.recovery import RevealedShare, SecAggRecoveryError, ShareKeeper, build_unmask_plan

CLIP = 4.0


def _plain_mean(updates: list[dict[str, np.ndarray]], weights: list[float], sites: frozenset[int]) -> dict:
    total = sum(weights[i] for i in sites)
    return {
        name: sum(weights[i] * np.clip(updates[i][name].astype(np.float64), -CLIP, CLIP) for i in sites)
        / total
        for name in updates[0]
    }


@pytest.mark.parametrize("seed", range(12))
def test_unmasked_mean_equals_plain_weighted_mean_with_dropouts(seed: int) -> None:
    # Prepare: random n in 3..20, weights, updates; up to floor(n/4) dropouts, some before the upload
    # (their pairwise masks must be rebuilt) and some after it (their self-masks must be rebuilt)
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 21))
    updates = [
        {
            "w": rng.normal(size=(4, 6)).astype(np.float32),
            "b": rng.normal(scale=3, size=17).astype(np.float32),
        }
        for _ in range(n)
    ]
    weights = [float(rng.integers(1, 5000)) for _ in range(n)]
    dropouts = [int(s) for s in rng.permutation(n)[: int(rng.integers(0, n // 4 + 1))]]
    cut = int(rng.integers(0, len(dropouts) + 1))
    before_upload, before_unmask = frozenset(dropouts[:cut]), frozenset(dropouts[cut:])
    params = QuantizationParams(clip_range=CLIP, max_weight=5000.0, max_sites=n)

    # Execute
    result = run_local_round(
        updates,
        weights,
        params,
        drop_before_upload=before_upload,
        drop_before_unmask=before_unmask,
        rng=rng,
        chunk_elements=int(rng.integers(1, 40)),
    )

    # Assert: the survivors' weighted mean, within the proven quantization error
    assert result.survivors == frozenset(range(n)) - before_upload
    expected = _plain_mean(updates, weights, result.survivors)
    bound = mean_error_bound(params, result.weight_sum, len(result.survivors))
    for name, value in expected.items():
        assert result.mean[name].shape == value.shape
        assert np.max(np.abs(result.mean[name] - value)) <= bound
    assert abs(result.weight_sum - sum(weights[i] for i in result.survivors)) <= n * params.weight_step


def test_dropouts_beyond_the_threshold_fail_with_a_clear_error() -> None:
    # Prepare: 5 sites, complete graph, t = 3, so each site tolerates 1 dropped neighbour
    rng = np.random.default_rng(0)
    updates = [{"x": rng.normal(size=8).astype(np.float32)} for _ in range(5)]
    params = QuantizationParams(clip_range=CLIP, max_weight=10.0, max_sites=5)

    # Execute / Assert: two dropped uploads leave each survivor 2 live neighbours: too few shares
    with pytest.raises(SecAggRecoveryError, match="2 shares arrived, the threshold is 3"):
        run_local_round(updates, [1.0] * 5, params, drop_before_upload={0, 1})
    # the same when they vanish after uploading, before the unmask step
    with pytest.raises(SecAggRecoveryError, match="2 shares arrived, the threshold is 3"):
        run_local_round(updates, [1.0] * 5, params, drop_before_unmask={0, 1})
    # with fewer survivors than t, the survivors refuse to reveal anything
    with pytest.raises(FedtuneError, match="only 2 survivors, fewer than the threshold 3"):
        run_local_round(updates, [1.0] * 5, params, drop_before_upload={0, 1, 2})


def _dealt_round(n: int) -> tuple:
    context = round_context("exp", "r")
    params = choose_graph_params(n)
    graph = neighbour_graph(params, b"seed")
    secrets = [SiteSecrets.generate() for _ in range(n)]
    publics = {i: s.public() for i, s in enumerate(secrets)}
    boxes: dict[int, dict[int, bytes]] = {i: {} for i in range(n)}
    for owner in range(n):
        for holder, box in deal_shares(
            owner, secrets[owner], {j: publics[j] for j in graph[owner]}, params.threshold, context
        ).items():
            boxes[holder][owner] = box
    keepers = [
        ShareKeeper(i, open_received_shares(i, secrets[i], boxes[i], publics, context), params.threshold)
        for i in range(n)
    ]
    return context, params, graph, publics, keepers


def test_a_wrong_share_is_detected_not_summed() -> None:
    # Prepare: one holder alters the seed share it reveals
    context, params, graph, publics, keepers = _dealt_round(4)
    survivors, dropped = frozenset(range(4)), frozenset()
    revealed = [share for keeper in keepers for share in keeper.reveal(survivors, dropped)]
    target = next(i for i, s in enumerate(revealed) if s.owner == 0)
    bad = revealed[target]
    revealed[target] = RevealedShare(bad.owner, bad.holder, bad.x, bad.kind, bytes(32))
    revealed = [
        s for s in revealed if s.owner != 0 or s.holder in {bad.holder, *sorted(graph[0] - {bad.holder})[:1]}
    ]

    # Execute / Assert
    with pytest.raises(SecAggRecoveryError, match="do not match its commitment"):
        build_unmask_plan(graph, params.threshold, publics, survivors, dropped, revealed, context)


def test_a_holder_answers_only_one_survivor_split() -> None:
    # Prepare
    _, _, _, _, keepers = _dealt_round(5)
    keepers[0].reveal(frozenset({0, 1, 2, 3}), frozenset({4}))

    # Execute / Assert: the same split again is fine (a retried call); another is refused
    assert keepers[0].reveal(frozenset({0, 1, 2, 3}), frozenset({4}))
    with pytest.raises(FedtuneError, match="another survivor/dropped split"):
        keepers[0].reveal(frozenset({0, 1, 2, 4}), frozenset({3}))
