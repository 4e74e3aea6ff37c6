"""A site's secrets for one round, key agreement (X25519) and the keys derived from it (HKDF-SHA256).

Each site makes two X25519 key pairs per round, as in Bonawitz et al. 2017: the *cipher* pair agrees the
AES-GCM keys that seal the shares it deals; the *mask* pair agrees its pairwise mask keys. Only the mask
private key (and the self-mask seed) is secret-shared, so revealing a dropped site's mask key to the
coordinator never opens the sealed shares. ``context`` binds every derived key to one round
(``round_context``): keys and masks never repeat across rounds, even if a key pair were reused.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedtune.errors import ErrorCode, FedtuneError

PUBLIC_KEY_BYTES = 32
SECRET_BYTES = 32  # the self-mask seed and the raw X25519 mask private key
_DOMAIN = b"fedtune-secagg-v1"


def round_context(experiment_id: str, round_id: str) -> bytes:
    """The bytes that tie derived keys, masks and sealed shares to one round of one experiment."""
    exp, rnd = experiment_id.encode(), round_id.encode()
    return _DOMAIN + struct.pack(">I", len(exp)) + exp + struct.pack(">I", len(rnd)) + rnd


def seed_commitment(self_seed: bytes) -> bytes:
    """SHA-256 commitment to a self-mask seed, published with the keys: a reconstructed seed is checked
    against it, so a wrong share fails loudly instead of corrupting the sum (256-bit seed: hiding)."""
    return hashlib.sha256(_DOMAIN + b"/self-seed-commitment/" + self_seed).digest()


@dataclass(frozen=True)
class SitePublic:
    """What a site advertises to its neighbours (relayed by the coordinator)."""

    cipher_key: bytes  # X25519 public key for sealing shares
    mask_key: bytes  # X25519 public key for pairwise masks
    seed_commitment: bytes  # seed_commitment(self_seed)

    def __post_init__(self) -> None:
        for name in ("cipher_key", "mask_key", "seed_commitment"):
            if len(getattr(self, name)) != PUBLIC_KEY_BYTES:
                raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"a site's {name} must have 32 bytes")


@dataclass(frozen=True)
class SiteSecrets:
    """A site's secrets for one round. Never leaves the site, except as sealed shares."""

    cipher_private: bytes
    mask_private: bytes
    self_seed: bytes

    @classmethod
    def generate(cls) -> SiteSecrets:
        return cls(
            cipher_private=X25519PrivateKey.generate().private_bytes_raw(),
            mask_private=X25519PrivateKey.generate().private_bytes_raw(),
            self_seed=secrets.token_bytes(SECRET_BYTES),
        )

    def public(self) -> SitePublic:
        return SitePublic(
            cipher_key=public_key_of(self.cipher_private),
            mask_key=public_key_of(self.mask_private),
            seed_commitment=seed_commitment(self.self_seed),
        )


def public_key_of(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def _agree(private: bytes, peer_public: bytes) -> bytes:
    try:
        return X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(peer_public)
        )
    except ValueError as err:  # wrong length, or a low-order point giving an all-zero secret
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT, f"a peer's X25519 public key is unusable: {err}"
        ) from None


def _derive(secret: bytes, purpose: bytes, context: bytes, low: int, high: int) -> bytes:
    info = _DOMAIN + b"/" + purpose + b"/" + struct.pack(">II", low, high) + context
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def pair_mask_key(
    my_mask_private: bytes, me: int, peer_mask_public: bytes, peer: int, context: bytes
) -> bytes:
    """The ChaCha20 key of the pairwise mask between sites ``me`` and ``peer``: both derive the same."""
    low, high = sorted((me, peer))
    return _derive(_agree(my_mask_private, peer_mask_public), b"pair-mask", context, low, high)


def self_mask_key(self_seed: bytes, site: int, context: bytes) -> bytes:
    """The ChaCha20 key of a site's self-mask."""
    return _derive(self_seed, b"self-mask", context, site, site)


def share_box_key(
    my_cipher_private: bytes, me: int, peer_cipher_public: bytes, peer: int, context: bytes
) -> bytes:
    """The AES-256-GCM key sealing shares between ``me`` and ``peer`` (either direction)."""
    low, high = sorted((me, peer))
    return _derive(_agree(my_cipher_private, peer_cipher_public), b"share-box", context, low, high)
