"""Every role of one secure-aggregation round in one process: the order of calls the round protocol
follows, run end to end (used by tests and ``bench/secagg_kernel.py``; not a transport).

1. the coordinator picks n sites, k and t (``choose_graph_params``) and a public graph seed;
2. each site makes its round secrets and advertises ``SitePublic``;
3. each site deals sealed shares to its neighbours; the coordinator relays the boxes;
4. each site opens its boxes, then quantizes and masks its update chunk by chunk and uploads;
   the coordinator folds the masked chunks (modular sum);
5. the coordinator names survivors and dropped; each responding survivor reveals shares;
6. the coordinator builds the unmask plan, unmasks the sum chunk by chunk and dequantizes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence, Set
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fedtune.secagg.dealing import deal_shares, open_received_shares
from fedtune.secagg.graph import choose_graph_params, neighbour_graph
from fedtune.secagg.keys import SitePublic, SiteSecrets, round_context
from fedtune.secagg.masking import WEIGHT_OFFSET, VectorLayout, mask_chunk, modular_fold, site_mask_keys
from fedtune.secagg.quantize import (
    QuantizationParams,
    dequantize_weight_sum,
    quantize_chunk,
    quantize_weight,
    weighted_mean,
)
from fedtune.secagg.recovery import RevealedShare, ShareKeeper, build_unmask_plan

DEFAULT_CHUNK_ELEMENTS = 1 << 20  # 4 MiB of uint32 per chunk


@dataclass(frozen=True)
class LocalRoundResult:
    mean: dict[str, NDArray[np.float32]]
    weight_sum: float
    survivors: frozenset[int]
    dropped: frozenset[int]


def site_chunks(
    update: Mapping[str, NDArray[np.floating]], layout: VectorLayout, chunk_elements: int
) -> Iterator[tuple[str, int, NDArray[np.floating]]]:
    """``(tensor name, masked-vector offset, flat float slice)`` over an update, chunk by chunk."""
    for name in sorted(update):
        flat = np.asarray(update[name]).reshape(-1)
        for start in range(0, flat.size, chunk_elements):
            yield name, layout.offset(name, start), flat[start : start + chunk_elements]


def run_local_round(
    updates: Sequence[Mapping[str, NDArray[np.floating]]],
    weights: Sequence[float],
    quantization: QuantizationParams,
    *,
    drop_before_upload: Set[int] = frozenset(),
    drop_before_unmask: Set[int] = frozenset(),
    neighbours: int | None = None,
    threshold: int | None = None,
    public_seed: bytes = b"graph-seed",
    context: bytes = round_context("local", "0"),
    rng: np.random.Generator | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> LocalRoundResult:
    """The weighted mean of the surviving sites' updates, computed through masking and unmasking only."""
    rng = rng if rng is not None else np.random.default_rng()
    n = len(updates)
    params = choose_graph_params(n, neighbours, threshold)
    graph = neighbour_graph(params, public_seed)
    layout = VectorLayout.of({name: int(np.asarray(a).size) for name, a in updates[0].items()})

    secrets = [SiteSecrets.generate() for _ in range(n)]
    publics: dict[int, SitePublic] = {i: s.public() for i, s in enumerate(secrets)}
    boxes_for: dict[int, dict[int, bytes]] = {i: {} for i in range(n)}
    for owner in range(n):
        dealt = deal_shares(
            owner, secrets[owner], {j: publics[j] for j in graph[owner]}, params.threshold, context
        )
        for holder, box in dealt.items():
            boxes_for[holder][owner] = box
    keepers = {
        i: ShareKeeper(
            i,
            open_received_shares(i, secrets[i], boxes_for[i], {j: publics[j] for j in graph[i]}, context),
            params.threshold,
        )
        for i in range(n)
    }

    masked_sum = np.zeros(layout.total, dtype=np.uint32)
    survivors = frozenset(range(n)) - frozenset(drop_before_upload)
    for site in sorted(survivors):
        keys = site_mask_keys(site, secrets[site], {j: publics[j].mask_key for j in graph[site]}, context)
        weight_element = quantize_weight(weights[site], quantization, rng)
        modular_fold(
            masked_sum[WEIGHT_OFFSET : WEIGHT_OFFSET + 1], mask_chunk(weight_element, WEIGHT_OFFSET, keys)
        )
        for _, offset, values in site_chunks(updates[site], layout, chunk_elements):
            masked = mask_chunk(quantize_chunk(values, weights[site], quantization, rng), offset, keys)
            modular_fold(masked_sum[offset : offset + masked.size], masked)

    dropped = frozenset(range(n)) - survivors
    revealed: list[RevealedShare] = []
    for site in sorted(survivors - frozenset(drop_before_unmask)):
        revealed.extend(keepers[site].reveal(survivors, dropped))
    plan = build_unmask_plan(graph, params.threshold, publics, survivors, dropped, revealed, context)

    plain_sum = np.empty_like(masked_sum)
    for start in range(0, layout.total, chunk_elements):
        plain_sum[start : start + chunk_elements] = plan.unmask_chunk(
            masked_sum[start : start + chunk_elements], start
        )
    weight_sum = dequantize_weight_sum(int(plain_sum[WEIGHT_OFFSET]), quantization)
    mean = {
        name: weighted_mean(
            plain_sum[layout.offset(name) : layout.offset(name) + size], weight_sum, quantization
        ).reshape(np.asarray(updates[0][name]).shape)
        for name, size in layout.sizes.items()
    }
    return LocalRoundResult(mean=mean, weight_sum=weight_sum, survivors=survivors, dropped=dropped)
