"""t-of-n Shamir sharing of a site's 32-byte mask secrets: glue around pycryptodome's implementation.

pycryptodome (``Crypto.Protocol.SecretSharing.Shamir``, maintained, the one Flower's SecAgg+ uses)
shares 16-byte secrets over GF(2^128). A 32-byte secret is shared as two independent 16-byte halves;
a share is the two half-shares side by side, at one x coordinate. x is 1 + the holder's rank among the
owner's holders, carried in the sealed share, so any t holders can rebuild the secret.

pycryptodome's ``combine`` returns garbage, not an error, for fewer than t shares, so ``combine_secret``
counts them, and callers check the result against a public value (the mask public key, the seed
commitment: ``recovery.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from Crypto.Protocol.SecretSharing import Shamir

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.secagg.keys import SECRET_BYTES

_HALF = 16
SHARE_BYTES = SECRET_BYTES


def split_secret(secret: bytes, threshold: int, holders: Sequence[int]) -> dict[int, tuple[int, bytes]]:
    """``{holder: (x, share)}``: any ``threshold`` of them rebuild ``secret``, fewer reveal nothing."""
    if len(secret) != SECRET_BYTES:
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"a shared secret has {SECRET_BYTES} bytes")
    ordered = sorted(set(holders))
    if len(ordered) != len(holders) or not 1 <= threshold <= len(ordered):
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"cannot share a secret {threshold}-of-{len(holders)} among holders {sorted(holders)}",
        )
    low = Shamir.split(threshold, len(ordered), secret[:_HALF])
    high = Shamir.split(threshold, len(ordered), secret[_HALF:])
    return {holder: (x, lo + hi) for holder, (x, lo), (_, hi) in zip(ordered, low, high, strict=True)}


def combine_secret(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret from ``{x: share}``; exactly ``threshold`` shares are used (the lowest x first)."""
    if len(shares) < threshold:
        raise FedtuneError(
            ErrorCode.WRONG_STATE, f"{len(shares)} shares cannot rebuild a secret shared {threshold}-of-n"
        )
    chosen = sorted(shares.items())[:threshold]
    if any(len(share) != SHARE_BYTES or x < 1 for x, share in chosen):
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"a share is an x >= 1 and {SHARE_BYTES} bytes")
    low = Shamir.combine([(x, share[:_HALF]) for x, share in chosen])
    high = Shamir.combine([(x, share[_HALF:]) for x, share in chosen])
    return low + high
