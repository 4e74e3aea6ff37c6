"""A site's masks, masking one chunk at any offset, and the coordinator's modular fold.

Site ``i`` sends ``q_i + b_i + sum_{j in N(i)} sign(i, j) * p_ij`` (all mod 2^32) where ``b_i`` is its
self-mask stream, ``p_ij`` the stream of the key it agreed with neighbour ``j``, and ``sign(i, j)`` is
+1 if ``i < j`` else -1: each pairwise stream is added by one side and subtracted by the other, so it
cancels in the sum of both. Element ``e`` of every stream is the same wherever a chunk starts, so a
site masks chunk by chunk (O(chunk) memory) and a resumed upload re-masks from any offset.

The layout of the masked vector is the protocol's choice; ``WEIGHT_OFFSET`` reserves element 0 for
the weight and ``VectorLayout`` places tensors after it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.secagg.keys import SiteSecrets, pair_mask_key, self_mask_key
from fedtune.secagg.prg import MAX_STREAM_ELEMENTS, mask_stream

WEIGHT_OFFSET = 0  # the weight element comes first; tensors follow


@dataclass(frozen=True)
class MaskKeys:
    """The streams that make up one mask: each ChaCha20 key with the sign it is added with."""

    terms: tuple[tuple[bytes, int], ...]

    def mask(self, offset: int, count: int) -> NDArray[np.uint32]:
        """Elements ``[offset, offset + count)`` of ``sum(sign * stream(key))`` mod 2^32."""
        total = np.zeros(count, dtype=np.uint32)
        for key, sign in self.terms:
            stream = mask_stream(key, offset, count)
            if sign > 0:
                np.add(total, stream, out=total)
            else:
                np.subtract(total, stream, out=total)
        return total


def site_mask_keys(
    site: int, secrets: SiteSecrets, neighbour_mask_keys: Mapping[int, bytes], context: bytes
) -> MaskKeys:
    """Site ``site``'s mask: its self-mask plus one signed pairwise stream per neighbour that advertised
    keys (``{neighbour: mask public key}``; a neighbour that never advertised is left out, and the
    coordinator leaves it out of the unmasking too)."""
    if site in neighbour_mask_keys:
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"site {site} cannot be its own neighbour")
    terms = [(self_mask_key(secrets.self_seed, site, context), 1)]
    for peer, peer_key in sorted(neighbour_mask_keys.items()):
        terms.append(
            (pair_mask_key(secrets.mask_private, site, peer_key, peer, context), pair_sign(site, peer))
        )
    return MaskKeys(tuple(terms))


def pair_sign(site: int, peer: int) -> int:
    """+1 if ``site`` adds the pairwise stream it shares with ``peer``, -1 if it subtracts it."""
    return 1 if site < peer else -1


def mask_chunk(quantized: NDArray[np.uint32], offset: int, keys: MaskKeys) -> NDArray[np.uint32]:
    """``quantized + mask`` mod 2^32 for the elements starting at ``offset`` (a new array)."""
    flat = np.asarray(quantized, dtype=np.uint32).reshape(-1)
    masked = keys.mask(offset, flat.size)
    np.add(masked, flat, out=masked)
    return masked


def modular_fold(accumulator: NDArray[np.uint32], chunk: NDArray[np.uint32]) -> None:
    """``accumulator += chunk`` mod 2^32, in place: the coordinator's fold of masked chunks."""
    if accumulator.dtype != np.uint32 or chunk.dtype != np.uint32:
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, "masked chunks are uint32")
    if accumulator.shape != chunk.shape:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"a masked chunk of shape {chunk.shape} cannot fold into {accumulator.shape}",
        )
    np.add(accumulator, chunk, out=accumulator)


def modular_sum(chunks: Iterable[NDArray[np.uint32]]) -> NDArray[np.uint32]:
    """The mod 2^32 sum of equally shaped uint32 chunks."""
    total: NDArray[np.uint32] | None = None
    for chunk in chunks:
        if total is None:
            total = np.array(chunk, dtype=np.uint32, copy=True)
        else:
            modular_fold(total, chunk)
    if total is None:
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, "nothing to sum")
    return total


@dataclass(frozen=True)
class VectorLayout:
    """Where each tensor's elements sit in the masked vector: the weight at 0, then tensors by name."""

    offsets: Mapping[str, int]
    sizes: Mapping[str, int]
    total: int

    @classmethod
    def of(cls, sizes: Mapping[str, int]) -> VectorLayout:
        offsets: dict[str, int] = {}
        position = WEIGHT_OFFSET + 1
        for name in sorted(sizes):
            offsets[name] = position
            position += sizes[name]
        if position > MAX_STREAM_ELEMENTS:
            raise FedtuneError(
                ErrorCode.TOO_LARGE,
                f"an update of {position} elements exceeds the {MAX_STREAM_ELEMENTS} a mask stream covers",
            )
        return cls(offsets=offsets, sizes=dict(sizes), total=position)

    def offset(self, name: str, element: int = 0) -> int:
        """The masked-vector index of element ``element`` of tensor ``name``."""
        if not 0 <= element <= self.sizes[name]:
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT, f"{name} has {self.sizes[name]} elements, not {element}"
            )
        return self.offsets[name] + element
