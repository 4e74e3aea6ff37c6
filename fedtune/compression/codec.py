"""The numpy kernels of update compression, and the encoding of a whole update on a site.

int8: per block, ``scale = max|x| / 127`` (float32) and ``q = round(x / scale)``, so every element
decodes within scale / 2 of its value (plus float32 rounding). bf16: round to nearest even, a relative
error of at most 2^-8. top-k: the k elements of largest magnitude per tensor, k = ceil(fraction x
numel) (at least 1), indices sorted ascending.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedtune.compression.encoding import (
    INDEX_SUFFIX,
    SCALE_SUFFIX,
    VALUE_SUFFIX,
    UpdateEncoding,
    block_count,
    effective_block,
)
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.dtypes import from_float32, to_float32

INT8_LEVELS = 127


def quantize_int8(values: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes, float32 scales) of flat `values`, one scale per `block_size` elements (0: one)."""
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    block = effective_block(flat.size, block_size)
    blocks = block_count(flat.size, block_size)
    if blocks == 0:
        return np.zeros(0, np.int8), np.zeros(0, np.float32)
    padded = np.zeros(blocks * block, np.float32)
    padded[: flat.size] = flat
    grid = padded.reshape(blocks, block)
    scales = (np.abs(grid).max(axis=1) / np.float32(INT8_LEVELS)).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1.0))
    codes = np.clip(np.rint(grid / safe[:, None]), -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
    return codes.reshape(-1)[: flat.size], scales


def dequantize_int8(
    codes: np.ndarray, scales: np.ndarray, block: int, start: int = 0, first_block: int = 0
) -> np.ndarray:
    """float32 values of `codes`, which are elements [start, start + len) of their tensor; `scales`
    holds the scales from block `first_block` on and `block` is the elements per scale."""
    positions = np.arange(start, start + codes.size, dtype=np.int64) // block - first_block
    result: np.ndarray = codes.astype(np.float32) * scales[positions]
    return result


def to_bf16_bits(values: np.ndarray) -> np.ndarray:
    return from_float32(np.ascontiguousarray(values, dtype=np.float32), "bfloat16")


def topk_count(numel: int, fraction: float) -> int:
    """Entries a tensor of `numel` elements sends at `fraction` (at least 1, at most numel)."""
    if numel == 0:
        return 0
    return min(numel, max(1, math.ceil(fraction * numel)))


def topk_indices(values: np.ndarray, k: int) -> np.ndarray:
    """int32 flat indices of the `k` largest |values|, ascending."""
    flat = np.asarray(values).reshape(-1)
    if k >= flat.size:
        return np.arange(flat.size, dtype=np.int32)
    chosen = np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :]
    return np.sort(chosen).astype(np.int32)


@dataclass
class EncodedUpdate:
    arrays: dict[str, np.ndarray]  # the tensors to send, in order
    dtypes: dict[str, str]  # wire dtype where numpy's differs (bfloat16 bits are uint16)
    decoded: dict[str, np.ndarray]  # the delta the coordinator will rebuild, per model tensor (float32)


def _encode_values(name: str, values: np.ndarray, encoding: UpdateEncoding, out: EncodedUpdate) -> np.ndarray:
    """Put `values` under `name` in the values encoding; returns what they decode to (float32)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if encoding.values == "fp32":
        out.arrays[name] = values
        return values
    if encoding.values == "bf16":
        bits = to_bf16_bits(values)
        out.arrays[name], out.dtypes[name] = bits, "bfloat16"
        return to_float32(bits, "bfloat16").reshape(values.shape)
    codes, scales = quantize_int8(values, encoding.int8_block_size)
    out.arrays[name] = codes.reshape(values.shape)
    out.arrays[name + SCALE_SUFFIX] = scales
    block = effective_block(values.size, encoding.int8_block_size)
    return dequantize_int8(codes, scales, block).reshape(values.shape)


def encode_update(
    deltas: Mapping[str, np.ndarray], encoding: UpdateEncoding, topk_fraction: float | None = None
) -> EncodedUpdate:
    """Encode the per-tensor `deltas` (trained - model version, in manifest order)."""
    if encoding.is_plain:
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, "a plain fp32 update sends the weights, not a delta")
    if encoding.topk and not (topk_fraction and 0 < topk_fraction < 1):
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT, f"top-k needs a fraction in (0, 1), got {topk_fraction}"
        )
    out = EncodedUpdate({}, {}, {})
    for name, delta in deltas.items():
        delta = np.ascontiguousarray(delta, dtype=np.float32)
        if not encoding.topk:
            out.decoded[name] = _encode_values(name, delta, encoding, out)
            continue
        flat = delta.reshape(-1)
        k = topk_count(flat.size, topk_fraction or 0.0)
        indices = topk_indices(flat, k)
        out.arrays[name + INDEX_SUFFIX] = indices
        sent = _encode_values(name + VALUE_SUFFIX, flat[indices], encoding, out)
        dense = np.zeros(flat.size, np.float32)
        dense[indices] = sent
        out.decoded[name] = dense.reshape(delta.shape)
    return out
