"""Manifest: the ordered list of tensors in a stream, and the chunk type."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.dtypes import dtype_name_of, storage_array, wire_dtype

# 4 MiB: a message costs a few hops (event loop, pool thread, protobuf) whatever its size, so 1 MiB
# chunks spent more on hops than on bytes for large models (decision 41); memory stays O(chunk).
DEFAULT_CHUNK_BYTES = 4 << 20
MAX_CHUNK_BYTES = 16 << 20  # chunks larger than this are rejected (gRPC's message cap is set above it)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @classmethod
    def for_array(cls, name: str, array: np.ndarray, dtype: str | None = None) -> TensorSpec:
        """The spec of `array` stored as `dtype` (default: its own dtype; pass "bfloat16" for uint16 bits)."""
        dtype_name = dtype or dtype_name_of(np.asarray(array))
        raw = storage_array(array, dtype_name)
        return cls(name, dtype_name, tuple(int(d) for d in raw.shape), int(raw.nbytes))

    def validate(self) -> None:
        dt = wire_dtype(self.dtype)
        if not self.name:
            raise FedtuneError(ErrorCode.BAD_MANIFEST, "a tensor has an empty name")
        if any(d < 0 for d in self.shape):
            raise FedtuneError(
                ErrorCode.BAD_MANIFEST, f"tensor {self.name!r} has a negative dimension {self.shape}"
            )
        if self.nbytes != self.numel * dt.itemsize:
            raise FedtuneError(
                ErrorCode.BAD_MANIFEST,
                f"tensor {self.name!r}: nbytes {self.nbytes} != {self.numel} elements x {dt.itemsize} bytes",
            )


@dataclass(frozen=True)
class Manifest:
    tensors: tuple[TensorSpec, ...]
    digest: str = ""  # sha256 hex of all tensor bytes in order ("" when not yet known)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    def validate(self) -> None:
        seen: set[str] = set()
        for t in self.tensors:
            t.validate()
            if t.name in seen:
                raise FedtuneError(ErrorCode.BAD_MANIFEST, f"tensor {t.name!r} appears twice in the manifest")
            seen.add(t.name)

    def same_layout(self, other: Manifest) -> bool:
        """Same names, dtypes and shapes in the same order (digests may differ)."""
        return [(t.name, t.dtype, t.shape) for t in self.tensors] == [
            (t.name, t.dtype, t.shape) for t in other.tensors
        ]

    def to_json(self) -> dict[str, object]:
        return {
            "tensors": [
                {"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "nbytes": t.nbytes}
                for t in self.tensors
            ],
            "digest": self.digest,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Manifest:
        tensors = data.get("tensors", [])
        assert isinstance(tensors, list)
        return cls(
            tensors=tuple(
                TensorSpec(t["name"], t["dtype"], tuple(int(d) for d in t["shape"]), int(t["nbytes"]))
                for t in tensors
            ),
            digest=str(data.get("digest", "")),
        )

    @classmethod
    def of(cls, tensors: Sequence[TensorSpec], digest: str = "") -> Manifest:
        return cls(tuple(tensors), digest)


@dataclass(frozen=True)
class Chunk:
    tensor_index: int
    offset: int  # byte offset inside the tensor
    data: bytes = field(repr=False)
    crc32: int
