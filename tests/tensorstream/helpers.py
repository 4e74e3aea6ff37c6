"""Small arrays of every wire dtype, shared by the tensor stream tests."""

from __future__ import annotations

import numpy as np

from fedtune.tensorstream.dtypes import WIRE_DTYPES, from_float32


def array_of(dtype_name: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random storage values of `dtype_name` (bfloat16 as uint16 bits of finite values)."""
    rng = np.random.default_rng(seed)
    if dtype_name == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    storage = WIRE_DTYPES[dtype_name].storage
    if WIRE_DTYPES[dtype_name].floating:
        values = rng.standard_normal(size=shape).astype(np.float32) * 10
        return from_float32(values, dtype_name).reshape(shape)
    info = np.iinfo(storage)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=storage)


def every_dtype_arrays() -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """One array per wire dtype plus an empty tensor and a 0-d scalar; and the dtypes mapping."""
    arrays: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for i, name in enumerate(WIRE_DTYPES):
        arrays[f"layer.{name}"] = array_of(name, (3, 5), seed=i)
        dtypes[f"layer.{name}"] = name
    arrays["empty"] = np.zeros((0, 4), dtype=np.float32)
    arrays["scalar"] = np.float32(2.5) * np.ones((), dtype=np.float32)
    arrays["bf16.scalar"] = array_of("bfloat16", ())
    dtypes["bf16.scalar"] = "bfloat16"
    return arrays, dtypes
