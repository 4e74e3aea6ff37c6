"""Secure-aggregation kernel (issue 10): what the coordinator sees reveals nothing of one site's update,
it cannot read the shares it relays, and no holder helps unmask a site."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy.stats import chisquare

from fedtune.errors import FedtuneError
from fedtune.secagg.dealing import deal_shares, open_received_shares
from fedtune.secagg.graph import choose_graph_params, neighbour_graph
from fedtune.secagg.keys import SiteSecrets, round_context, share_box_key
from fedtune.secagg.masking import mask_chunk, site_mask_keys
from fedtune.secagg.quantize import QuantizationParams, quantize_chunk
from fedtune.secagg.recovery import ShareKeeper
from fedtune.secagg.share_box import open_share

CONTEXT = round_context("exp", "round-7")
ELEMENTS = 1 << 16


def _fixed_secrets(label: str) -> SiteSecrets:
    """Deterministic secrets so the statistical tests cannot flake."""

    def derive(part: str) -> bytes:
        return hashlib.sha256(f"{label}/{part}".encode()).digest()

    return SiteSecrets(cipher_private=derive("cipher"), mask_private=derive("mask"), self_seed=derive("seed"))


def _masked(plain: np.ndarray) -> np.ndarray:
    sites = [_fixed_secrets(f"site-{i}") for i in range(4)]
    keys = site_mask_keys(0, sites[0], {j: sites[j].public().mask_key for j in range(1, 4)}, CONTEXT)
    params = QuantizationParams(clip_range=1.0, max_weight=1.0, max_sites=4)
    quantized = quantize_chunk(plain, 1.0, params, np.random.default_rng(0))
    return mask_chunk(quantized, 1, keys)


@pytest.mark.parametrize("pattern", ["zeros", "ramp", "saturated"])
def test_masked_update_is_indistinguishable_from_uniform(pattern: str) -> None:
    # Prepare: highly structured plain updates (their bytes are far from uniform)
    plain = {
        "zeros": np.zeros(ELEMENTS),
        "ramp": np.linspace(-1, 1, ELEMENTS),
        "saturated": np.full(ELEMENTS, 5.0),
    }[pattern]

    # Execute
    masked = _masked(plain)

    # Assert: the masked bytes pass a chi-square test for uniformity (256 byte values), and so do the top
    # 8 bits of each element; the plain bytes fail it
    masked_bytes = np.bincount(masked.view(np.uint8), minlength=256)
    assert chisquare(masked_bytes).pvalue > 1e-3
    assert chisquare(np.bincount(masked >> 24, minlength=256)).pvalue > 1e-3
    assert chisquare(np.bincount(quantize_plain(plain).view(np.uint8), minlength=256)).pvalue < 1e-9


def quantize_plain(plain: np.ndarray) -> np.ndarray:
    params = QuantizationParams(clip_range=1.0, max_weight=1.0, max_sites=4)
    return quantize_chunk(plain, 1.0, params, np.random.default_rng(0))


def test_masked_update_reveals_nothing_of_the_plain_update() -> None:
    # Prepare: a smooth signal with large structure
    plain = np.sin(np.linspace(0, 40, ELEMENTS))

    # Execute
    masked = _masked(plain).view(np.int32).astype(np.float64)

    # Assert: no linear relation between masked and plain values (|r| < 5 sigma of a null correlation)
    correlation = np.corrcoef(masked, plain)[0, 1]
    assert abs(correlation) < 5 / np.sqrt(ELEMENTS)


def _dealt(n: int) -> tuple[list[SiteSecrets], dict, dict[int, dict[int, bytes]], int]:
    params = choose_graph_params(n)
    graph = neighbour_graph(params, b"seed")
    secrets = [SiteSecrets.generate() for _ in range(n)]
    publics = {i: s.public() for i, s in enumerate(secrets)}
    boxes: dict[int, dict[int, bytes]] = {i: {} for i in range(n)}
    for owner in range(n):
        for holder, box in deal_shares(
            owner, secrets[owner], {j: publics[j] for j in graph[owner]}, params.threshold, CONTEXT
        ).items():
            boxes[holder][owner] = box
    return secrets, publics, boxes, params.threshold


def test_coordinator_cannot_open_the_shares_it_relays() -> None:
    # Prepare: the coordinator holds every public key and every box, and keys of its own
    secrets, publics, boxes, _ = _dealt(4)
    coordinator = SiteSecrets.generate()
    box = boxes[1][0]

    # Execute / Assert: no key it can agree opens a box from site 0 to site 1
    for guess in (
        share_box_key(coordinator.cipher_private, 1, publics[0].cipher_key, 0, CONTEXT),
        share_box_key(coordinator.cipher_private, 0, publics[1].cipher_key, 1, CONTEXT),
    ):
        with pytest.raises(FedtuneError, match="does not open"):
            open_share(box, guess, CONTEXT, owner=0, holder=1)
    # a dropped site's revealed mask key is no help either: the share boxes use the separate cipher key
    revealed_mask_key = secrets[0].mask_private
    with pytest.raises(FedtuneError, match="does not open"):
        open_share(box, share_box_key(revealed_mask_key, 0, publics[1].cipher_key, 1, CONTEXT), CONTEXT, 0, 1)


def test_swapped_or_replayed_share_boxes_do_not_open() -> None:
    # Prepare
    secrets, publics, boxes, _ = _dealt(4)

    # Execute / Assert: site 2's box handed to site 1, and a box from another round
    with pytest.raises(FedtuneError, match="does not open"):
        open_received_shares(1, secrets[1], {0: boxes[2][0]}, publics, CONTEXT)
    with pytest.raises(FedtuneError, match="does not open"):
        open_received_shares(1, secrets[1], {0: boxes[1][0]}, publics, round_context("exp", "round-8"))
    assert open_received_shares(1, secrets[1], {0: boxes[1][0]}, publics, CONTEXT)[0].owner == 0


def test_a_holder_never_reveals_both_secrets_of_one_site() -> None:
    # Prepare
    secrets, publics, boxes, threshold = _dealt(5)
    keeper = ShareKeeper(1, open_received_shares(1, secrets[1], boxes[1], publics, CONTEXT), threshold)

    # Execute / Assert: a split naming a site both surviving and dropped is refused
    with pytest.raises(FedtuneError, match="both surviving and dropped"):
        keeper.reveal(frozenset({0, 1, 2, 3}), frozenset({0}))
    revealed = keeper.reveal(frozenset({0, 1, 2, 3}), frozenset({4}))
    assert {(s.owner, s.kind) for s in revealed} == {(0, "seed"), (2, "seed"), (3, "seed"), (4, "mask_key")}
    # and after answering once, a second split (asking for site 0's other secret) is refused
    with pytest.raises(FedtuneError, match="another survivor/dropped split"):
        keeper.reveal(frozenset({1, 2, 3, 4}), frozenset({0}))
