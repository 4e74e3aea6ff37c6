"""An update's encoding on the wire and the exact layout of the tensors it sends (docs/decisions.md 40).

A plain update (fp32, dense) is today's stream: the trained tensors in the model version's layout.
Any other encoding sends the *delta* (trained - the task's model version) of every model tensor:

- dense ``bf16``: ``<name>`` bfloat16, the model tensor's shape;
- dense ``int8``: ``<name>`` int8 (the shape) and ``<name>#scale`` float32 [blocks], one scale per
  ``int8_block_size`` consecutive elements in row-major order (0: one scale for the whole tensor);
  element i decodes to ``q[i] * scale[i // block]``;
- ``topk``: ``<name>#idx`` int32 [k] (flat row-major indices, strictly increasing, each < numel) and
  ``<name>#val`` [k] encoded as above with the values encoding (float32, bfloat16, or int8 plus
  ``<name>#val#scale``); every element not listed has delta 0.

The coordinator rebuilds ``model version + delta`` in the model's dtype; per tensor, ``k`` is what the
manifest says (0 < k <= numel for a non-empty tensor), so no float rounding has to agree across sites.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.dtypes import wire_dtype
from fedtune.tensorstream.manifest import Manifest, TensorSpec

ValuesEncoding = Literal["fp32", "bf16", "int8"]
VALUES_ENCODINGS: tuple[str, ...] = ("fp32", "bf16", "int8")
SCALE_SUFFIX = "#scale"
INDEX_SUFFIX = "#idx"
VALUE_SUFFIX = "#val"
MAX_INT8_BLOCK_SIZE = 1 << 24  # elements per scale; larger is "per tensor" in all but name
MAX_TOPK_NUMEL = 2**31 - 1  # indices are int32
_WIRE_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "int8": "int8"}


@dataclass(frozen=True)
class UpdateEncoding:
    values: ValuesEncoding = "fp32"
    int8_block_size: int = 0  # int8 only: elements per scale; 0 = one scale per tensor
    topk: bool = False  # sparse delta: per tensor indices + values

    @property
    def is_plain(self) -> bool:
        """Today's stream: the trained tensors themselves, float32, dense."""
        return self.values == "fp32" and not self.topk

    def describe(self) -> str:
        if self.is_plain:
            return "fp32"
        text: str = self.values
        if self.values == "int8":
            text += f" (block {self.int8_block_size or 'per tensor'})"
        return text + (" top-k" if self.topk else "")

    @classmethod
    def checked(cls, values: str, int8_block_size: int, topk: bool) -> UpdateEncoding:
        """The encoding a header names; INVALID_ARGUMENT naming the field when it is not one."""
        values = values or "fp32"
        if values not in VALUES_ENCODINGS:
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT,
                f"encoding.values: {values[:40]!r} is not one of {', '.join(VALUES_ENCODINGS)}",
            )
        if not 0 <= int8_block_size <= MAX_INT8_BLOCK_SIZE:
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT,
                f"encoding.int8_block_size: {int8_block_size} is outside [0, {MAX_INT8_BLOCK_SIZE}]",
            )
        if int8_block_size and values != "int8":
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT,
                f"encoding.int8_block_size: set for values {values}; it applies to int8 only (send 0)",
            )
        return cls(cast(ValuesEncoding, values), int(int8_block_size), bool(topk))


def block_count(numel: int, block_size: int) -> int:
    """Scales of an int8 tensor of `numel` elements: ceil(numel / block), 1 per tensor (0 when empty)."""
    if numel == 0:
        return 0
    return 1 if block_size == 0 else -(-numel // block_size)


def effective_block(numel: int, block_size: int) -> int:
    """Elements per scale (a per-tensor scale covers the whole tensor)."""
    return block_size if block_size else max(numel, 1)


def values_layout(name: str, shape: tuple[int, ...], encoding: UpdateEncoding) -> list[TensorSpec]:
    """The tensors that carry `shape` values under `name` in the values encoding."""
    dtype = _WIRE_DTYPE[encoding.values]
    numel = 1
    for d in shape:
        numel *= d
    specs = [TensorSpec(name, dtype, shape, numel * wire_dtype(dtype).itemsize)]
    if encoding.values == "int8":
        blocks = block_count(numel, encoding.int8_block_size)
        specs.append(TensorSpec(name + SCALE_SUFFIX, "float32", (blocks,), blocks * 4))
    return specs


def tensor_layout(model: TensorSpec, encoding: UpdateEncoding, k: int = 0) -> list[TensorSpec]:
    """The encoded tensors of one model tensor (`k`: its top-k count)."""
    if not encoding.topk:
        return values_layout(model.name, model.shape, encoding)
    return [TensorSpec(model.name + INDEX_SUFFIX, "int32", (k,), 4 * k)] + values_layout(
        model.name + VALUE_SUFFIX, (k,), encoding
    )


def encoded_layout(model: Manifest, encoding: UpdateEncoding, topk_counts: Mapping[str, int]) -> Manifest:
    """The exact layout (no digest) of an update of `model` in `encoding`."""
    specs: list[TensorSpec] = []
    for t in model.tensors:
        specs.extend(tensor_layout(t, encoding, topk_counts.get(t.name, 0)))
    return Manifest.of(specs)


def topk_counts(model: Manifest, got: Manifest) -> dict[str, int]:
    """Each model tensor's k as `got` declares it; BAD_MANIFEST when a count is impossible."""
    shapes = {t.name: t.shape for t in got.tensors}
    counts: dict[str, int] = {}
    for t in model.tensors:
        shape = shapes.get(t.name + INDEX_SUFFIX)
        if shape is None or len(shape) != 1:
            raise FedtuneError(
                ErrorCode.BAD_MANIFEST,
                f"a top-k update needs a 1-D int32 tensor {t.name + INDEX_SUFFIX!r} for model tensor "
                f"{t.name!r}",
            )
        k = shape[0]
        if t.numel > MAX_TOPK_NUMEL:
            raise FedtuneError(
                ErrorCode.BAD_MANIFEST, f"tensor {t.name!r} has more elements than int32 top-k indices reach"
            )
        if k > t.numel or (t.numel > 0 and k == 0):
            raise FedtuneError(
                ErrorCode.BAD_MANIFEST,
                f"tensor {t.name + INDEX_SUFFIX!r} lists {k} entries; model tensor {t.name!r} has "
                f"{t.numel} elements (a top-k update sends 1 .. numel of them)",
            )
        counts[t.name] = k
    return counts


def check_encoded_manifest(model: Manifest, encoding: UpdateEncoding, got: Manifest) -> None:
    """BAD_MANIFEST naming the first tensor where `got` is not the layout of `model` in `encoding`."""
    for t in model.tensors:
        if not wire_dtype(t.dtype).floating:
            raise FedtuneError(
                ErrorCode.BAD_MANIFEST,
                f"tensor {t.name!r} is {t.dtype}: only floating tensors can be sent in encoding "
                f"{encoding.describe()}",
            )
    counts = topk_counts(model, got) if encoding.topk else {}
    expected = encoded_layout(model, encoding, counts)
    for index, (want, have) in enumerate(zip(expected.tensors, got.tensors, strict=False)):
        if (want.name, want.dtype, want.shape) != (have.name, have.dtype, have.shape):
            raise FedtuneError(
                ErrorCode.BAD_MANIFEST,
                f"encoding {encoding.describe()}: tensor {index} is {have.name!r} {have.dtype} "
                f"{list(have.shape)}, expected {want.name!r} {want.dtype} {list(want.shape)}",
            )
    if len(got.tensors) != len(expected.tensors):
        raise FedtuneError(
            ErrorCode.BAD_MANIFEST,
            f"encoding {encoding.describe()}: the update has {len(got.tensors)} tensors, expected "
            f"{len(expected.tensors)}",
        )
