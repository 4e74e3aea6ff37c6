"""The coordinator's streaming decode: round trips for every encoding, and malformed updates refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedtune.compression.codec import encode_update
from fedtune.compression.decode import decode_update
from fedtune.compression.encoding import UpdateEncoding
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.safetensors_file import read_arrays_float32, write_safetensors

ENCODINGS = [
    UpdateEncoding("bf16"),
    UpdateEncoding("int8", 16),
    UpdateEncoding("int8", 0),
    UpdateEncoding("fp32", 0, True),
    UpdateEncoding("bf16", 0, True),
    UpdateEncoding("int8", 8, True),
]


def _model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x.lora_A.weight": rng.standard_normal((6, 50)).astype(np.float32),
        "x.lora_B.weight": np.zeros((50, 6), np.float32),
        "empty": np.zeros((0,), np.float32),
        "head.bias": rng.standard_normal(5).astype(np.float32),
    }


def _trained(base: dict[str, np.ndarray], seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: a + (rng.standard_normal(a.shape) * 0.01).astype(np.float32) for n, a in base.items()}


def _setup(tmp_path: Path, encoding: UpdateEncoding) -> tuple[Path, Path, dict, dict]:  # type: ignore[type-arg]
    base = _model()
    trained = _trained(base)
    base_path = tmp_path / "base.safetensors"
    model = write_safetensors(base_path, base)
    deltas = {n: trained[n] - base[n] for n in base}
    encoded = encode_update(deltas, encoding, topk_fraction=0.3)
    encoded_path = tmp_path / "update.safetensors"
    write_safetensors(encoded_path, encoded.arrays, encoded.dtypes)
    expected = {n: base[n] + encoded.decoded[n] for n in base}
    return encoded_path, base_path, {"model": model}, expected


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.describe())
@pytest.mark.parametrize("chunk_elements", [7, 1 << 18])
def test_decode_rebuilds_base_plus_delta_chunk_by_chunk(
    tmp_path: Path, encoding: UpdateEncoding, chunk_elements: int
) -> None:
    # Prepare
    encoded_path, base_path, info, expected = _setup(tmp_path, encoding)

    # Execute: decode in place (what the coordinator does with its spool file)
    decode_update(
        encoded_path, encoding, info["model"], base_path, encoded_path, chunk_elements=chunk_elements
    )

    # Assert: exactly what the site computed it would send, in the model's layout
    got = read_arrays_float32(encoded_path)
    assert list(got) == list(expected)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-6, err_msg=name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.safetensors", "update.safetensors"]


def _tamper(path: Path, name: str, change) -> None:  # type: ignore[no-untyped-def]
    from fedtune.tensorstream.safetensors_file import read_arrays, read_header

    arrays = read_arrays(path)
    manifest, _ = read_header(path)
    arrays[name] = change(arrays[name].copy())
    write_safetensors(path, arrays, {t.name: t.dtype for t in manifest.tensors})


@pytest.mark.parametrize(
    ("name", "change", "code", "words"),
    [
        ("x.lora_A.weight#idx", lambda a: a[::-1].copy(), ErrorCode.INVALID_ARGUMENT, "strictly increasing"),
        (
            "x.lora_A.weight#idx",
            lambda a: np.where(a == a[1], a[0], a),
            ErrorCode.INVALID_ARGUMENT,
            "strictly",
        ),
        ("x.lora_A.weight#idx", lambda a: a + 1000, ErrorCode.INVALID_ARGUMENT, "outside [0, 300)"),
        ("x.lora_A.weight#idx", lambda a: a - a[0] - 1, ErrorCode.INVALID_ARGUMENT, "outside [0, 300)"),
        ("x.lora_A.weight#val#scale", lambda a: -a, ErrorCode.INVALID_ARGUMENT, "negative scale"),
        ("x.lora_A.weight#val#scale", lambda a: a * 1e9, ErrorCode.NON_FINITE, "max_update_abs_value"),
    ],
    ids=["reversed", "duplicate", "past-the-end", "negative", "negative-scale", "huge-value"],
)
def test_malformed_topk_updates_are_refused_naming_the_tensor(
    tmp_path: Path,
    name: str,
    change,
    code: ErrorCode,
    words: str,  # type: ignore[no-untyped-def]
) -> None:
    # Prepare
    encoding = UpdateEncoding("int8", 8, True)
    encoded_path, base_path, info, _ = _setup(tmp_path, encoding)
    _tamper(encoded_path, name, change)
    before = encoded_path.read_bytes()

    # Execute
    with pytest.raises(FedtuneError) as refused:
        decode_update(
            encoded_path,
            encoding,
            info["model"],
            base_path,
            encoded_path,
            max_abs_value=1e3,
            chunk_elements=16,
        )

    # Assert: named, and nothing was committed over the file
    assert refused.value.code is code and words in refused.value.message
    assert "x.lora_A.weight" in refused.value.message
    assert encoded_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.safetensors", "update.safetensors"]


def test_an_update_not_in_the_encoded_layout_is_a_bad_manifest(tmp_path: Path) -> None:
    # Prepare: an int8 update declared as bf16
    encoded_path, base_path, info, _ = _setup(tmp_path, UpdateEncoding("int8", 16))

    # Execute / Assert
    with pytest.raises(FedtuneError) as refused:
        decode_update(encoded_path, UpdateEncoding("bf16"), info["model"], base_path, encoded_path)
    assert refused.value.code is ErrorCode.BAD_MANIFEST
    assert "expected 'x.lora_A.weight' bfloat16" in refused.value.message
