"""A site's side of the round (fedtune/secagg/site.py): state on disk survives a restart, one split only,
and the strategy sets the spec refuses match what the registered strategies need."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator.secagg.masked_sum import MaskedSumStrategy
from coordinator.strategies.base import Strategy
from coordinator.strategies.registry import StrategyName, build_strategy
from coordinator.strategies.weighted_mean import WeightedMeanStrategy
from fedtune.errors import FedtuneError
from fedtune.secagg.keys import SitePublic
from fedtune.secagg.quantize import QuantizationParams
from fedtune.secagg.site import RoundSetup, SiteRound, graph_seed
from fedtune.spec import STRATEGIES_NEEDING_SITE_UPDATES, STRATEGIES_REFUSED_WITH_SECURE_AGGREGATION


def _setup() -> RoundSetup:
    return RoundSetup.of(
        experiment_id="exp-1",
        round_id="round-1",
        num_sites=4,
        clip_range=8.0,
        max_weight=100.0,
        neighbours=None,
        threshold=None,
    )


def _dealt_round(
    tmp_path: Path,
) -> tuple[RoundSetup, dict[int, SiteRound], dict[int, SitePublic], bytes, dict[int, dict[int, bytes]]]:
    setup = _setup()
    sites = {i: SiteRound(tmp_path / f"{i}.json") for i in range(4)}
    publics = {i: s.advertise() for i, s in sites.items()}
    seed = graph_seed(setup.context, publics)
    boxes_for: dict[int, dict[int, bytes]] = {i: {} for i in range(4)}
    for owner, site in sites.items():
        for holder, box in site.deal(setup, owner, publics, seed).items():
            boxes_for[holder][owner] = box
    return setup, sites, publics, seed, boxes_for


def test_a_restarted_site_keeps_its_keys_and_refuses_a_second_split(tmp_path: Path) -> None:
    setup, sites, publics, seed, boxes_for = _dealt_round(tmp_path)
    first = sites[0].reveal(setup, 0, publics, seed, boxes_for[0], {0, 1, 2}, {3})
    assert {s.owner: s.kind for s in first} == {1: "seed", 2: "seed", 3: "mask_key"}

    restarted = SiteRound(tmp_path / "0.json")  # a new worker process on the same work_dir
    assert restarted.advertise() == publics[0]
    again = restarted.reveal(setup, 0, publics, seed, boxes_for[0], {0, 1, 2}, {3})
    assert again == first
    with pytest.raises(FedtuneError, match="already revealed shares for another survivor/dropped split"):
        restarted.reveal(setup, 0, publics, seed, boxes_for[0], {0, 1, 2, 3}, set())


def test_a_site_refuses_a_graph_seed_that_does_not_match_the_keys(tmp_path: Path) -> None:
    setup = _setup()
    sites = {i: SiteRound(tmp_path / f"{i}.json") for i in range(4)}
    publics = {i: s.advertise() for i, s in sites.items()}
    with pytest.raises(FedtuneError, match="graph seed does not match"):
        sites[0].deal(setup, 0, publics, b"chosen by the coordinator")


def test_a_site_masks_one_update_per_round_even_after_a_restart(tmp_path: Path) -> None:
    setup, sites, publics, seed, _ = _dealt_round(tmp_path)
    update = {"w": np.ones(4, np.float32)}
    sites[2].mask(setup, 2, publics, seed, update, 5.0)

    restarted = SiteRound(tmp_path / "2.json")
    with pytest.raises(FedtuneError, match="already masked an update this round"):
        restarted.mask(setup, 2, publics, seed, update, 5.0)


def test_the_state_file_is_private(tmp_path: Path) -> None:
    site = SiteRound(tmp_path / "state" / "r.json")
    site.advertise()
    assert (site.path.stat().st_mode & 0o777) == 0o600


def test_a_masked_vector_is_the_weight_then_the_tensors_and_changes_with_the_masks(tmp_path: Path) -> None:
    setup, sites, publics, seed, _ = _dealt_round(tmp_path)
    update = {"b": np.ones(3, np.float32), "a": np.zeros(2, np.float32)}
    masked = sites[1].mask(setup, 1, publics, seed, update, 10.0)
    assert masked.dtype == np.int32 and masked.size == 1 + 2 + 3
    assert len(set(masked.tolist())) == masked.size  # uniform-looking, not the zeros and ones


@pytest.mark.parametrize("name", sorted(StrategyName))
def test_the_refused_strategy_sets_match_the_registry(name: str) -> None:
    strategy = build_strategy(name, {})
    params = QuantizationParams(clip_range=1.0, max_weight=1.0, max_sites=3)
    refused = name in STRATEGIES_NEEDING_SITE_UPDATES | STRATEGIES_REFUSED_WITH_SECURE_AGGREGATION
    # the weighted mean's own weight is the example count (or 1 under site-level DP), as the masked sum
    sum_only = isinstance(strategy, WeightedMeanStrategy) and type(strategy).weight in (
        Strategy.weight,
        WeightedMeanStrategy.weight,
    )
    assert refused != sum_only
    if refused:
        with pytest.raises(FedtuneError, match="cannot run with privacy.secure_aggregation"):
            MaskedSumStrategy(strategy, params)
    else:
        assert MaskedSumStrategy(strategy, params).inner is strategy
