"""The ChaCha20 mask stream is deterministic, seekable and bounded."""

from __future__ import annotations

import numpy as np
import pytest

from fedtune.errors import FedtuneError
from fedtune.secagg.prg import MAX_STREAM_ELEMENTS, mask_stream


def test_a_chunk_at_any_offset_equals_the_same_slice_of_the_whole_stream() -> None:
    # Prepare
    key = bytes(range(32))
    whole = mask_stream(key, 0, 1000)

    # Execute: chunks of odd sizes at offsets that do not fall on a block boundary
    pieces = [mask_stream(key, start, min(37, 1000 - start)) for start in range(0, 1000, 37)]

    # Assert
    assert np.array_equal(np.concatenate(pieces), whole)
    assert np.array_equal(mask_stream(key, 999, 1), whole[999:])


def test_different_keys_give_unrelated_streams() -> None:
    first = mask_stream(bytes(32), 0, 4096)
    second = mask_stream(bytes(31) + b"\x01", 0, 4096)
    assert np.mean(first == second) < 0.01


def test_elements_beyond_one_stream_are_refused() -> None:
    with pytest.raises(FedtuneError, match="smaller update"):
        mask_stream(bytes(32), MAX_STREAM_ELEMENTS - 2, 4)
    assert mask_stream(bytes(32), MAX_STREAM_ELEMENTS - 2, 2).size == 2
