"""Shares sealed for their holder (AES-256-GCM under a key only the owner and the holder can agree), so
the coordinator relays ciphertext it cannot read. The associated data binds a box to its round, owner
and holder: a coordinator that swaps boxes between sites or rounds makes them fail to open.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.secagg.shamir import SHARE_BYTES

NONCE_BYTES = 12
_LAYOUT = struct.Struct(f">III{SHARE_BYTES}s{SHARE_BYTES}s")  # owner, holder, x, seed share, mask-key share
SEALED_BYTES = NONCE_BYTES + _LAYOUT.size + 16  # + the GCM tag


@dataclass(frozen=True)
class SharePayload:
    """What ``owner`` hands ``holder``: its shares (at x) of its self-mask seed and its mask private key."""

    owner: int
    holder: int
    x: int
    seed_share: bytes
    mask_key_share: bytes


def _aad(context: bytes, owner: int, holder: int) -> bytes:
    return b"fedtune-secagg-share" + struct.pack(">II", owner, holder) + context


def seal_share(payload: SharePayload, key: bytes, context: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    plain = _LAYOUT.pack(payload.owner, payload.holder, payload.x, payload.seed_share, payload.mask_key_share)
    return nonce + AESGCM(key).encrypt(nonce, plain, _aad(context, payload.owner, payload.holder))


def open_share(sealed: bytes, key: bytes, context: bytes, owner: int, holder: int) -> SharePayload:
    """The payload, or INVALID_ARGUMENT if the box was altered, swapped or sealed for someone else."""
    if len(sealed) != SEALED_BYTES:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT, f"a sealed share has {SEALED_BYTES} bytes, not {len(sealed)}"
        )
    try:
        plain = AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _aad(context, owner, holder))
    except InvalidTag:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"the sealed share from site {owner} to site {holder} does not open: altered, swapped or "
            "misaddressed",
        ) from None
    owner_in, holder_in, x, seed_share, mask_key_share = _LAYOUT.unpack(plain)
    return SharePayload(
        owner=owner_in, holder=holder_in, x=x, seed_share=seed_share, mask_key_share=mask_key_share
    )
