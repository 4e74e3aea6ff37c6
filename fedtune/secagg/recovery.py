"""Dropout recovery: which shares a surviving site reveals, and removing the masks from the modular sum.

After the masked uploads, the coordinator names the *survivors* U (their masked input is in the sum) and
the *dropped* D (they advertised keys, so their neighbours masked with them, but sent no input). Each
responding survivor reveals, for each owner whose shares it holds, the share of the owner's self-mask
seed if the owner is in U, or of its mask private key if the owner is in D, never both for one owner
(``ShareKeeper`` remembers its first answer and refuses a different U/D later). From t shares the
coordinator rebuilds each survivor's seed (its self-mask) and each dropped site's mask key (the
pairwise masks its surviving neighbours added), checks each against the value published with the keys,
and removes those streams from the sum (``UnmaskPlan``, chunk by chunk, like the fold).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.secagg.keys import SitePublic, pair_mask_key, public_key_of, seed_commitment, self_mask_key
from fedtune.secagg.masking import MaskKeys, pair_sign
from fedtune.secagg.shamir import combine_secret
from fedtune.secagg.share_box import SharePayload

ShareKind = Literal["seed", "mask_key"]


class SecAggRecoveryError(FedtuneError):
    """The sum cannot be unmasked (too few shares, or shares that do not rebuild the published value):
    the round fails; no partial or wrong aggregate is produced."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.WRONG_STATE, message)


@dataclass(frozen=True)
class RevealedShare:
    owner: int
    holder: int
    x: int
    kind: ShareKind
    share: bytes


def _check_partition(survivors: Set[int], dropped: Set[int]) -> None:
    both = survivors & dropped
    if both:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"sites {sorted(both)} are named both surviving and dropped: revealing both of a site's secrets "
            "would unmask its update",
        )


class ShareKeeper:
    """A holder's received shares, revealed at most once per round and for one survivor/dropped split."""

    def __init__(self, holder: int, received: Mapping[int, SharePayload], threshold: int) -> None:
        self.holder = holder
        self._received = dict(received)
        self._threshold = threshold
        self._answered: tuple[frozenset[int], frozenset[int]] | None = None

    def reveal(self, survivors: Set[int], dropped: Set[int]) -> list[RevealedShare]:
        split = (frozenset(survivors), frozenset(dropped))
        if self._answered is not None and self._answered != split:
            raise FedtuneError(
                ErrorCode.WRONG_STATE,
                f"site {self.holder} already revealed shares for another survivor/dropped split this round; "
                "a second split could unmask a site",
            )
        _check_partition(*split)
        if self.holder not in split[0]:
            raise FedtuneError(ErrorCode.WRONG_STATE, f"site {self.holder} is not listed among the survivors")
        if len(split[0]) < self._threshold:
            raise FedtuneError(
                ErrorCode.WRONG_STATE,
                f"only {len(split[0])} survivors, fewer than the threshold {self._threshold}: shares are not "
                "revealed and the round fails",
            )
        self._answered = split
        revealed: list[RevealedShare] = []
        for owner, payload in sorted(self._received.items()):
            if owner in split[0]:
                revealed.append(RevealedShare(owner, self.holder, payload.x, "seed", payload.seed_share))
            elif owner in split[1]:
                revealed.append(
                    RevealedShare(owner, self.holder, payload.x, "mask_key", payload.mask_key_share)
                )
        return revealed


@dataclass(frozen=True)
class UnmaskPlan:
    """The streams to add to the modular sum of the survivors' inputs to remove every mask in it."""

    removal: MaskKeys

    def unmask_chunk(self, masked_sum: NDArray[np.uint32], offset: int) -> NDArray[np.uint32]:
        flat = np.asarray(masked_sum, dtype=np.uint32).reshape(-1)
        out = self.removal.mask(offset, flat.size)
        np.add(out, flat, out=out)
        return out


def _collect(
    revealed: Iterable[RevealedShare], graph: Sequence[Set[int]], survivors: Set[int], dropped: Set[int]
) -> dict[tuple[int, ShareKind], dict[int, bytes]]:
    """``{(owner, kind): {x: share}}``, keeping only shares a surviving neighbour may reveal."""
    collected: dict[tuple[int, ShareKind], dict[int, bytes]] = {}
    seen: set[tuple[int, int, ShareKind]] = set()
    for item in revealed:
        expected: ShareKind = "seed" if item.owner in survivors else "mask_key"
        if item.holder not in survivors or item.owner not in graph[item.holder] or item.kind != expected:
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT,
                f"site {item.holder} revealed a {item.kind} share of site {item.owner} it may not reveal",
            )
        if item.owner not in survivors | dropped or (item.owner, item.holder, item.kind) in seen:
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT, f"an unexpected or repeated share of site {item.owner}"
            )
        seen.add((item.owner, item.holder, item.kind))
        collected.setdefault((item.owner, item.kind), {})[item.x] = item.share
    return collected


def _rebuild(shares: Mapping[int, bytes], threshold: int, owner: int, what: str) -> bytes:
    if len(shares) < threshold:
        raise SecAggRecoveryError(
            f"cannot rebuild the {what} of site {owner}: {len(shares)} shares arrived, the threshold is "
            f"{threshold} (too many of its neighbours dropped); the round fails without an aggregate"
        )
    return combine_secret(shares, threshold)


def build_unmask_plan(
    graph: Sequence[Set[int]],
    threshold: int,
    publics: Mapping[int, SitePublic],
    survivors: Set[int],
    dropped: Set[int],
    revealed: Iterable[RevealedShare],
    context: bytes,
) -> UnmaskPlan:
    """The removal streams for the sum of ``survivors``' masked inputs.

    ``publics``: every site that advertised keys (each is a survivor or dropped). ``graph``: the round's
    neighbour graph. Raises ``SecAggRecoveryError`` if a secret cannot be rebuilt or does not match
    the published value.
    """
    _check_partition(survivors, dropped)
    if set(publics) != survivors | dropped:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            "survivors and dropped must together be exactly the sites that advertised keys",
        )
    collected = _collect(revealed, graph, survivors, dropped)
    terms: list[tuple[bytes, int]] = []
    for owner in sorted(survivors):
        seed = _rebuild(collected.get((owner, "seed"), {}), threshold, owner, "self-mask seed")
        if seed_commitment(seed) != publics[owner].seed_commitment:
            raise SecAggRecoveryError(
                f"the shares of site {owner}'s self-mask seed do not match its commitment"
            )
        terms.append((self_mask_key(seed, owner, context), -1))
    for owner in sorted(dropped):
        masked_with = sorted(u for u in graph[owner] if u in survivors)
        if not masked_with:
            continue  # no survivor added a stream shared with it
        mask_private = _rebuild(collected.get((owner, "mask_key"), {}), threshold, owner, "mask key")
        if public_key_of(mask_private) != publics[owner].mask_key:
            raise SecAggRecoveryError(f"the shares of site {owner}'s mask key do not match its public key")
        for survivor in masked_with:
            key = pair_mask_key(mask_private, owner, publics[survivor].mask_key, survivor, context)
            terms.append((key, -pair_sign(survivor, owner)))
    return UnmaskPlan(MaskKeys(tuple(terms)))
