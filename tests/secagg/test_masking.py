"""Pairwise masks cancel, masking is chunk-by-chunk at any offset, the fold is modular."""

from __future__ import annotations

import numpy as np
import pytest

from fedtune.errors import FedtuneError
from fedtune.secagg.keys import SiteSecrets, round_context
from fedtune.secagg.masking import (
    MaskKeys,
    VectorLayout,
    mask_chunk,
    modular_fold,
    modular_sum,
    site_mask_keys,
)
from fedtune.secagg.prg import mask_stream

CONTEXT = round_context("exp", "round-1")


def _site_keys(secrets: list[SiteSecrets]) -> list[MaskKeys]:
    publics = [s.public() for s in secrets]
    return [
        site_mask_keys(i, s, {j: p.mask_key for j, p in enumerate(publics) if j != i}, CONTEXT)
        for i, s in enumerate(secrets)
    ]


def test_pairwise_masks_cancel_leaving_only_the_self_masks() -> None:
    # Prepare
    secrets = [SiteSecrets.generate() for _ in range(5)]
    keys = _site_keys(secrets)

    # Execute: the sum of every site's whole mask
    total = modular_sum(k.mask(0, 500) for k in keys)

    # Assert: what is left is the sum of the self-mask streams (the first term of each)
    self_masks = modular_sum(mask_stream(k.terms[0][0], 0, 500) for k in keys)
    assert np.array_equal(total, self_masks)
    assert all(len(k.terms) == 5 for k in keys)  # self + 4 pairs


def test_masking_chunk_by_chunk_at_any_offset_equals_masking_at_once() -> None:
    # Prepare
    keys = _site_keys([SiteSecrets.generate() for _ in range(3)])[0]
    values = np.arange(1000, dtype=np.uint32)

    # Execute: as a resumed upload would, from offset 613 on in chunks of 100
    whole = mask_chunk(values, 0, keys)
    resumed = [mask_chunk(values[start : start + 100], start, keys) for start in range(613, 1000, 100)]

    # Assert
    assert np.array_equal(np.concatenate(resumed), whole[613:])


def test_modular_fold_wraps_around_2_to_the_32() -> None:
    accumulator = np.array([2**32 - 1, 5], dtype=np.uint32)
    modular_fold(accumulator, np.array([2, 2**32 - 5], dtype=np.uint32))
    assert accumulator.tolist() == [1, 0]
    with pytest.raises(FedtuneError, match="cannot fold"):
        modular_fold(accumulator, np.zeros(3, dtype=np.uint32))
    with pytest.raises(FedtuneError, match="uint32"):
        modular_fold(accumulator, np.zeros(2, dtype=np.int64))  # type: ignore[arg-type]


def test_a_site_is_not_its_own_neighbour() -> None:
    secrets = SiteSecrets.generate()
    with pytest.raises(FedtuneError, match="own neighbour"):
        site_mask_keys(0, secrets, {0: secrets.public().mask_key}, CONTEXT)


def test_layout_puts_the_weight_first_and_tensors_by_name() -> None:
    layout = VectorLayout.of({"b": 3, "a": 2})
    assert (layout.offset("a"), layout.offset("b"), layout.offset("b", 2), layout.total) == (1, 3, 5, 6)
    with pytest.raises(FedtuneError):
        layout.offset("a", 3)
