"""The neighbour graph (Bell et al. 2020, SecAgg+): each site masks with and shares to k neighbours only.

A Harary graph H(k, n) over a public pseudorandom permutation of the sites: sites sit on a ring in the
order of ``HMAC-SHA256(public_seed, site)``, and each is joined to the k/2 nearest on either side. Cost
per site is O(k) key agreements, mask streams and shares, so a round costs O(n*k), not O(n^2). The
permutation comes from a seed nobody controls alone (the protocol derives it after every site has
committed its keys), so the coordinator cannot place a victim among colluders.

The auto rule (``choose_graph_params``): up to ``COMPLETE_GRAPH_MAX_SITES`` the graph is complete
(classic SecAgg: cheap at that size, and the strongest). Above it, k is the smallest even number at
least ``max(MIN_NEIGHBOURS, NEIGHBOURS_PER_LOG2_SITE * log2 n)``: Bell et al. show k = O(log n) keeps
the sum private and recoverable w.h.p. for a constant fraction of dropped and corrupt sites; the
constant 4 is our conservative choice (n = 32 gives k = 20, n = 1000 gives k = 40), not their bound.
The threshold t is a strict majority of the neighbours, ``k // 2 + 1``: a coordinator that lies about
who dropped cannot gather, from two disjoint groups of honest neighbours, both a site's self-mask seed
and its mask key (Bonawitz et al. 2017 need t > n/2 for the active case). A round recovers while no
site has more than ``k - t`` dropped neighbours; with the rule, any ``floor(n/4)`` dropouts recover for
n <= 40, and random ones w.h.p. beyond (adversarial ones can target one neighbourhood, which is why
the rule keeps k generous).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
from dataclasses import dataclass

from fedtune.errors import ErrorCode, FedtuneError

MIN_SITES = 3  # with 2 sites, each one learns the other's update from the sum and its own
COMPLETE_GRAPH_MAX_SITES = 16
MIN_NEIGHBOURS = 16
NEIGHBOURS_PER_LOG2_SITE = 4


@dataclass(frozen=True)
class GraphParams:
    sites: int  # n
    neighbours: int  # k: each site's degree
    threshold: int  # t: shares needed to rebuild one of a site's secrets

    @property
    def tolerated_dropouts_per_neighbourhood(self) -> int:
        return self.neighbours - self.threshold


def auto_neighbours(sites: int) -> int:
    if sites <= COMPLETE_GRAPH_MAX_SITES:
        return sites - 1
    wanted = max(MIN_NEIGHBOURS, math.ceil(NEIGHBOURS_PER_LOG2_SITE * math.log2(sites)))
    wanted += wanted % 2
    return min(wanted, sites - 1)


def choose_graph_params(
    sites: int, neighbours: int | None = None, threshold: int | None = None
) -> GraphParams:
    """k and t for ``sites`` selected sites: the auto rule, or the spec's values checked."""
    if sites < MIN_SITES:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"secure aggregation needs at least {MIN_SITES} sites in a round, got {sites}: with fewer, a "
            "site learns the others' updates from the sum; raise selection.min_sites",
        )
    k = auto_neighbours(sites) if neighbours is None else neighbours
    if not 2 <= k <= sites - 1 or (k % 2 and k != sites - 1):
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"secagg.neighbours {k} must be even and in [2, {sites - 1}], or {sites - 1} (every other site), "
            f"for {sites} sites; leave it unset for the automatic choice",
        )
    t = k // 2 + 1 if threshold is None else threshold
    if not k // 2 + 1 <= t <= k:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"secagg.threshold {t} must be in [{k // 2 + 1}, {k}] for {k} neighbours: at or below half, a "
            "coordinator that lies about dropouts can learn a site's masks; leave it unset for the automatic "
            "choice",
        )
    return GraphParams(sites=sites, neighbours=k, threshold=t)


def neighbour_graph(params: GraphParams, public_seed: bytes) -> tuple[frozenset[int], ...]:
    """``graph[i]``: the neighbours of site ``i`` (sites are 0..n-1). Symmetric, k-regular, deterministic."""
    n, k = params.sites, params.neighbours
    if k == n - 1:
        return tuple(frozenset(j for j in range(n) if j != i) for i in range(n))

    def rank(site: int) -> bytes:
        return hmac.new(
            public_seed, b"fedtune-secagg-graph" + struct.pack(">I", site), hashlib.sha256
        ).digest()

    ring = sorted(range(n), key=rank)
    position = {site: p for p, site in enumerate(ring)}
    return tuple(
        frozenset(ring[(position[i] + d) % n] for d in range(-(k // 2), k // 2 + 1) if d != 0)
        for i in range(n)
    )
