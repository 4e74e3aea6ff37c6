"""The compression kernels: error bounds of int8 and bf16, top-k selection, whole-update encoding."""

from __future__ import annotations

import numpy as np
import pytest

from fedtune.compression.codec import (
    dequantize_int8,
    encode_update,
    quantize_int8,
    to_bf16_bits,
    topk_count,
    topk_indices,
)
from fedtune.compression.encoding import UpdateEncoding, effective_block
from fedtune.tensorstream.dtypes import to_float32


def _values(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # mixed magnitudes, as LoRA deltas have: most small, a few large
    return (rng.standard_normal(n) * np.exp(rng.uniform(-6, 1, n))).astype(np.float32)


@pytest.mark.parametrize("block", [0, 1, 7, 64, 256, 1000])
def test_int8_error_is_at_most_half_a_scale_per_element(block: int) -> None:
    # Prepare
    values = _values(block, 1000)

    # Execute
    codes, scales = quantize_int8(values, block)
    decoded = dequantize_int8(codes, scales, effective_block(values.size, block))

    # Assert
    step = effective_block(values.size, block)
    per_element_scale = np.repeat(scales, step)[: values.size]
    assert codes.dtype == np.int8 and scales.dtype == np.float32
    assert scales.size == (1 if block == 0 else -(-values.size // block))
    assert np.all(np.abs(decoded - values) <= per_element_scale / 2 * (1 + 1e-6) + 1e-12)
    assert np.abs(codes).max() == 127  # each block's largest value uses the full range


def test_int8_of_a_zero_block_decodes_to_zero_and_an_empty_tensor_has_no_scale() -> None:
    # Execute
    codes, scales = quantize_int8(np.zeros(10, np.float32), 4)
    empty_codes, empty_scales = quantize_int8(np.zeros(0, np.float32), 0)

    # Assert
    assert np.all(dequantize_int8(codes, scales, 4) == 0) and np.all(scales == 0)
    assert empty_codes.size == 0 and empty_scales.size == 0


def test_int8_dequantize_of_a_slice_matches_the_whole() -> None:
    # Prepare
    values = _values(3, 500)
    codes, scales = quantize_int8(values, 64)
    whole = dequantize_int8(codes, scales, 64)

    # Execute: elements [130, 330) with the scales from block 2 on (what the streaming decode reads)
    part = dequantize_int8(codes[130:330], scales[2:6], 64, start=130, first_block=2)

    # Assert
    np.testing.assert_array_equal(part, whole[130:330])


def test_bf16_relative_error_is_at_most_2_to_the_minus_8() -> None:
    # Prepare
    values = _values(4, 10_000)

    # Execute
    decoded = to_float32(to_bf16_bits(values), "bfloat16")

    # Assert
    relative = np.abs(decoded - values) / np.abs(values)
    assert relative.max() <= 2.0**-8


def test_topk_keeps_the_largest_magnitudes_in_ascending_index_order() -> None:
    # Prepare
    values = np.array([0.1, -5.0, 0.0, 3.0, -0.2, 4.0], np.float32)

    # Execute
    indices = topk_indices(values, 3)

    # Assert
    assert indices.tolist() == [1, 3, 5] and indices.dtype == np.int32
    assert topk_count(1000, 0.1) == 100 and topk_count(5, 0.01) == 1 and topk_count(0, 0.5) == 0


@pytest.mark.parametrize(
    "encoding",
    [
        UpdateEncoding("bf16"),
        UpdateEncoding("int8", 32),
        UpdateEncoding("int8", 0),
        UpdateEncoding("fp32", 0, True),
    ],
    ids=lambda e: e.describe(),
)
def test_encode_update_names_its_tensors_and_reports_what_the_coordinator_rebuilds(
    encoding: UpdateEncoding,
) -> None:
    # Prepare
    deltas = {"a.lora_A.weight": _values(5, 96).reshape(8, 12), "b.bias": _values(6, 7)}

    # Execute
    encoded = encode_update(deltas, encoding, topk_fraction=0.25)

    # Assert
    if encoding.topk:
        assert list(encoded.arrays) == [
            "a.lora_A.weight#idx",
            "a.lora_A.weight#val",
            "b.bias#idx",
            "b.bias#val",
        ]
        assert encoded.arrays["a.lora_A.weight#idx"].shape == (24,)
        kept = encoded.decoded["a.lora_A.weight"] != 0
        assert kept.sum() == 24
        smallest_kept = np.abs(deltas["a.lora_A.weight"][kept]).min()
        assert np.abs(deltas["a.lora_A.weight"][~kept]).max() <= smallest_kept
    elif encoding.values == "int8":
        assert list(encoded.arrays) == ["a.lora_A.weight", "a.lora_A.weight#scale", "b.bias", "b.bias#scale"]
        assert encoded.arrays["a.lora_A.weight"].dtype == np.int8
    else:
        assert encoded.dtypes == {"a.lora_A.weight": "bfloat16", "b.bias": "bfloat16"}
    for name, delta in deltas.items():
        assert encoded.decoded[name].shape == delta.shape
        if not encoding.topk:
            np.testing.assert_allclose(encoded.decoded[name], delta, atol=np.abs(delta).max() / 100)


def test_bytes_shrink_by_the_expected_factor() -> None:
    # Prepare: a LoRA-like update of 1 MiB in fp32
    deltas = {f"layer.{i}.lora_A.weight": _values(i, 8 * 4096).reshape(8, 4096) for i in range(8)}
    fp32 = sum(d.nbytes for d in deltas.values())

    # Execute
    def sent(encoding: UpdateEncoding, fraction: float | None = None) -> int:
        return sum(a.nbytes for a in encode_update(deltas, encoding, fraction).arrays.values())

    # Assert
    assert sent(UpdateEncoding("bf16")) == fp32 / 2
    assert sent(UpdateEncoding("int8", 256)) == fp32 / 4 + 4 * fp32 // 4 // 256  # codes + one scale per block
    assert sent(UpdateEncoding("fp32", 0, True), 0.1) == pytest.approx(fp32 * 0.1 * 2, rel=0.01)  # idx + val
    assert sent(UpdateEncoding("int8", 256, True), 0.1) == pytest.approx(fp32 * 0.1 * 5 / 4, rel=0.02)
