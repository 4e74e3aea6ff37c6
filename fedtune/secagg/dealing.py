"""Dealing a site's mask secrets to its neighbours, and opening the shares a site received.

A site splits its self-mask seed and its mask private key t-of-k among the neighbours that advertised
keys, and seals each neighbour's pair of shares for that neighbour (``share_box``). The coordinator
relays the boxes; a holder opens the ones addressed to it and keeps them until the unmask step.
"""

from __future__ import annotations

from collections.abc import Mapping

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.secagg.keys import SitePublic, SiteSecrets, share_box_key
from fedtune.secagg.shamir import split_secret
from fedtune.secagg.share_box import SharePayload, open_share, seal_share


def check_enough_holders(site: int, holders: int, threshold: int) -> None:
    """A site with fewer than t live neighbours could not be recovered if it dropped: the round stops."""
    if holders < threshold:
        raise FedtuneError(
            ErrorCode.WRONG_STATE,
            f"site {site} has {holders} neighbours with keys, fewer than the threshold {threshold}: "
            "its masks could not be recovered; the round cannot go on securely (too many sites dropped "
            "before sharing)",
        )


def deal_shares(
    site: int, secrets: SiteSecrets, neighbours: Mapping[int, SitePublic], threshold: int, context: bytes
) -> dict[int, bytes]:
    """``{neighbour: sealed box}`` with that neighbour's shares of ``site``'s seed and mask key."""
    check_enough_holders(site, len(neighbours), threshold)
    holders = sorted(neighbours)
    seed_shares = split_secret(secrets.self_seed, threshold, holders)
    key_shares = split_secret(secrets.mask_private, threshold, holders)
    sealed: dict[int, bytes] = {}
    for holder in holders:
        x, seed_share = seed_shares[holder]
        _, key_share = key_shares[holder]
        payload = SharePayload(
            owner=site, holder=holder, x=x, seed_share=seed_share, mask_key_share=key_share
        )
        key = share_box_key(secrets.cipher_private, site, neighbours[holder].cipher_key, holder, context)
        sealed[holder] = seal_share(payload, key, context)
    return sealed


def open_received_shares(
    site: int,
    secrets: SiteSecrets,
    boxes: Mapping[int, bytes],
    owners: Mapping[int, SitePublic],
    context: bytes,
) -> dict[int, SharePayload]:
    """``{owner: payload}`` from the boxes addressed to ``site`` (``{owner: sealed box}``)."""
    received: dict[int, SharePayload] = {}
    for owner, sealed in boxes.items():
        if owner not in owners:
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT, f"a share from site {owner}, which is not a neighbour"
            )
        key = share_box_key(secrets.cipher_private, site, owners[owner].cipher_key, owner, context)
        payload = open_share(sealed, key, context, owner=owner, holder=site)
        if payload.owner != owner or payload.holder != site:
            raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"the share from site {owner} names another pair")
        received[owner] = payload
    return received
