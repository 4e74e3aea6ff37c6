"""Heterogeneous LoRA ranks (docs/decisions.md 37): which rank a site trains, and the zero-padding that
keeps every site's update in the global rank-r layout. Plain numpy, shared by the worker and the
coordinator.

The global adapter has rank r: per adapted layer A is (r, k) and B is (d, r) (peft's ``lora_A`` /
``lora_B``; ``lora_embedding_A`` / ``lora_embedding_B`` for embeddings). A site of rank r_i <= r trains
the first r_i components, ``A[:r_i]`` and ``B[:, :r_i]``, and sends them back in the global's (r, k) and
(d, r) layout with the components it did not train as the global had them (`embed_in_global`), so the
coordinator sees one layout (admission unchanged) and aggregates the products. The coordinator orders the
components by singular value after each round, so the first r_i are the site's top r_i. (`pad_to_shapes`
pads with zeros instead, FlexLoRA's own choice: B_pad A_pad = B_i A_i.)

A site's ΔW is ``scale * B_i @ A_i``; peft's scale is alpha / r (alpha / sqrt(r) with rsLoRA), so a site
of rank r_i trains with alpha_i chosen to keep the global scale (`site_alpha`): the products of all
sites are then in the same units and the exported rank-r adapter means what the sites trained.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from fedtune.spec import RANK_AWARE_STRATEGIES

__all__ = [
    "PAIR_MARKERS",
    "RANK_AWARE_STRATEGIES",
    "lora_pairs",
    "embed_in_global",
    "pad_to_shapes",
    "site_alpha",
    "site_rank",
    "slice_to_rank",
]

# (A marker, B marker) in peft's save names; A is (r, in), B is (out, r)
PAIR_MARKERS = ((".lora_A.", ".lora_B."), (".lora_embedding_A", ".lora_embedding_B"))


def lora_pairs(names: Iterable[str]) -> list[tuple[str, str]]:
    """(A name, B name) for every LoRA pair among `names`, in the order of the A tensors."""
    present = list(names)
    known = set(present)
    pairs = []
    for name in present:
        for a_marker, b_marker in PAIR_MARKERS:
            if a_marker in name:
                partner = name.replace(a_marker, b_marker, 1)
                if partner in known:
                    pairs.append((name, partner))
                break
    return pairs


def site_rank(global_rank: int, site_ranks: Mapping[str, int] | None, site: str, max_rank: int | None) -> int:
    """The rank `site` trains: its entry in `peft.site_ranks` (default the global r), capped by the
    worker's `--max-lora-rank`."""
    rank = (site_ranks or {}).get(site, global_rank)
    if max_rank is not None:
        rank = min(rank, max_rank)
    return max(1, min(rank, global_rank))


def site_alpha(alpha: float, rank: int, global_rank: int, rslora: bool) -> float:
    """lora_alpha for a rank-`rank` site so its scale equals the global one (alpha / r or alpha / sqrt(r))."""
    ratio = rank / global_rank
    return alpha * (math.sqrt(ratio) if rslora else ratio)


def _factor(name: str) -> str | None:
    """ "A" or "B" for a LoRA factor's save name, None for any other tensor."""
    for a_marker, b_marker in PAIR_MARKERS:
        if a_marker in name:
            return "A"
        if b_marker in name:
            return "B"
    return None


def slice_to_rank(arrays: Mapping[str, np.ndarray], rank: int) -> dict[str, np.ndarray]:
    """The first `rank` components of every LoRA factor (A[:rank], B[:, :rank]; a B without its A, as
    FFA-LoRA sends, too); other tensors as they are."""
    out = dict(arrays)
    for name, array in arrays.items():
        factor = _factor(name)
        if factor == "A":
            out[name] = np.ascontiguousarray(array[:rank])
        elif factor == "B":
            out[name] = np.ascontiguousarray(array[:, :rank])
    return out


def embed_in_global(
    arrays: Mapping[str, np.ndarray], global_arrays: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """A lower-rank site's trained tensors in the global layout: its factors overwrite the global's first
    components, and the components it did not train go back as the global had them (not zeros: the mean
    over sites would shrink them by the share of lower-rank sites each round; bench/hetero_lora.py
    measures the difference). Other tensors as they are."""
    out = dict(arrays)
    for name, array in arrays.items():
        whole = global_arrays[name]
        if tuple(array.shape) == tuple(whole.shape):
            continue
        factor = _factor(name)
        axis = 0 if factor == "A" else 1
        fits = (
            factor is not None
            and array.ndim == whole.ndim == 2
            and array.shape[1 - axis] == whole.shape[1 - axis]
            and array.shape[axis] < whole.shape[axis]
        )
        if not fits:
            raise ValueError(
                f"{name}: shape {tuple(array.shape)} does not fit the global {tuple(whole.shape)}"
            )
        merged = np.array(whole, dtype=array.dtype, copy=True)
        if axis == 0:
            merged[: array.shape[0]] = array
        else:
            merged[:, : array.shape[1]] = array
        out[name] = merged
    return out


def pad_to_shapes(
    arrays: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, np.ndarray]:
    """Each LoRA factor zero-padded to its global shape (A rows, B columns): B_pad A_pad = B A exactly.
    Other tensors must already have their global shape."""
    out = dict(arrays)
    for name, array in arrays.items():
        want = tuple(shapes[name])
        if tuple(array.shape) == want:
            continue
        factor = _factor(name)
        axis = 0 if factor == "A" else 1
        grown = [i for i, (have, need) in enumerate(zip(array.shape, want, strict=True)) if have != need]
        if factor is None or grown != [axis] or array.shape[axis] > want[axis]:
            raise ValueError(f"{name}: shape {tuple(array.shape)} does not pad to the global {want}")
        padded = np.zeros(want, dtype=array.dtype)
        padded[tuple(slice(0, n) for n in array.shape)] = array
        out[name] = padded
    return out
