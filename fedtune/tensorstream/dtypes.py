"""Wire dtypes: names used in manifests, with their numpy storage type and safetensors code.

numpy has no bfloat16: its bytes are carried as uint16 and widened to float32 by
``to_float32`` (bf16 is the top half of an IEEE float32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedtune.errors import ErrorCode, FedtuneError


@dataclass(frozen=True)
class WireDtype:
    name: str  # manifest name
    storage: np.dtype  # numpy dtype holding the raw bytes
    safetensors: str  # safetensors header code
    itemsize: int
    floating: bool


def _wd(name: str, storage: str, st: str, floating: bool) -> WireDtype:
    dt = np.dtype(storage).newbyteorder("<")
    return WireDtype(name, dt, st, dt.itemsize, floating)


WIRE_DTYPES: dict[str, WireDtype] = {
    d.name: d
    for d in (
        _wd("float64", "f8", "F64", True),
        _wd("float32", "f4", "F32", True),
        _wd("float16", "f2", "F16", True),
        _wd("bfloat16", "u2", "BF16", True),
        _wd("int64", "i8", "I64", False),
        _wd("int32", "i4", "I32", False),
        _wd("int16", "i2", "I16", False),
        _wd("int8", "i1", "I8", False),
        _wd("uint8", "u1", "U8", False),
        _wd("bool", "?", "BOOL", False),
    )
}
BY_SAFETENSORS_CODE: dict[str, WireDtype] = {d.safetensors: d for d in WIRE_DTYPES.values()}


def wire_dtype(name: str) -> WireDtype:
    try:
        return WIRE_DTYPES[name]
    except KeyError:
        known = ", ".join(sorted(WIRE_DTYPES))
        raise FedtuneError(ErrorCode.BAD_MANIFEST, f"unknown dtype {name!r}; use one of {known}") from None


def dtype_name_of(array: np.ndarray) -> str:
    """The wire name of a numpy array's dtype (bf16 arrays must be passed as ``BF16Array``)."""
    for d in WIRE_DTYPES.values():
        if d.name != "bfloat16" and np.dtype(array.dtype).newbyteorder("<") == d.storage:
            return d.name
    raise FedtuneError(ErrorCode.BAD_MANIFEST, f"numpy dtype {array.dtype} has no wire dtype")


def to_float32(raw: np.ndarray, dtype_name: str) -> np.ndarray:
    """Widen raw storage values of `dtype_name` to float32 (for aggregation)."""
    if dtype_name == "bfloat16":
        return (raw.astype("<u4") << 16).view("<f4")
    return raw.astype(np.float32, copy=False)


def from_float32(values: np.ndarray, dtype_name: str) -> np.ndarray:
    """Narrow float32 values to the storage of `dtype_name` (bf16 rounds to nearest even)."""
    if dtype_name == "bfloat16":
        bits = np.ascontiguousarray(values, dtype="<f4").view("<u4")
        rounded = bits + 0x7FFF + ((bits >> 16) & 1)
        narrowed: np.ndarray = (rounded >> 16).astype("<u2")
        return narrowed
    return values.astype(wire_dtype(dtype_name).storage)


def storage_array(array: np.ndarray, dtype_name: str) -> np.ndarray:
    """`array` as a C-contiguous little-endian array of the storage type of `dtype_name` (no copy if it is).

    The array must already hold that storage type (up to byte order): a bfloat16 tensor is passed as
    its uint16 bits. Raises BAD_MANIFEST otherwise.
    """
    dt = wire_dtype(dtype_name)
    arr = np.asarray(array)
    if np.dtype(arr.dtype).newbyteorder("<") != dt.storage:
        raise FedtuneError(
            ErrorCode.BAD_MANIFEST,
            f"array of numpy dtype {arr.dtype} cannot be stored as {dtype_name} (expects {dt.storage})",
        )
    return np.asarray(arr, dtype=dt.storage, order="C")


def is_finite_raw(raw: np.ndarray, dtype_name: str) -> bool:
    """True when no value of raw storage `raw` is NaN or Inf (always True for integer and bool dtypes)."""
    dt = wire_dtype(dtype_name)
    if not dt.floating:
        return True
    if dtype_name == "bfloat16":
        return not bool(np.any((raw & 0x7F80) == 0x7F80))
    return bool(np.isfinite(raw).all())


def finite_max_abs_raw(raw: np.ndarray, dtype_name: str) -> float | None:
    """The largest |value| in raw storage `raw` (0.0 when empty), or None when a value is NaN or Inf.

    For float16/32/64 this is two SIMD reductions (max and min, which propagate NaN) with no temporary
    array: the per-chunk check of every received byte, so it must cost far less than the sha256."""
    if raw.size == 0 or not wire_dtype(dtype_name).floating:
        return max_abs_raw(raw, dtype_name)
    if dtype_name == "bfloat16":
        return max_abs_raw(raw, dtype_name) if is_finite_raw(raw, dtype_name) else None
    largest = max(abs(float(raw.max())), abs(float(raw.min())))
    return largest if math.isfinite(largest) else None


def max_abs_raw(raw: np.ndarray, dtype_name: str) -> float:
    """The largest |value| in raw storage `raw` (0.0 when empty); call after `is_finite_raw`."""
    if raw.size == 0 or dtype_name == "bool":
        return 0.0
    if dtype_name == "bfloat16":
        return float(np.abs(to_float32(raw, dtype_name)).max())
    if wire_dtype(dtype_name).floating:
        return float(np.abs(raw).max())
    return float(max(abs(int(raw.max())), abs(int(raw.min()))))  # integers: no overflow in abs()
