from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.dtypes import to_float32
from fedtune.tensorstream.manifest import Manifest, TensorSpec
from fedtune.tensorstream.safetensors_file import (
    SafetensorsFileWriter,
    data_digest,
    iter_float32,
    read_arrays,
    read_arrays_float32,
    read_header,
    read_metadata,
    write_safetensors,
)
from tests.tensorstream.helpers import array_of, every_dtype_arrays


def test_round_trips_every_dtype_empty_and_scalar_tensors(tmp_path: Path) -> None:
    # Prepare
    arrays, dtypes = every_dtype_arrays()
    path = tmp_path / "m.safetensors"

    # Execute
    manifest = write_safetensors(path, arrays, dtypes)
    back = read_arrays(path)

    # Assert
    assert list(back) == list(arrays)
    for name, array in arrays.items():
        assert back[name].shape == array.shape
        np.testing.assert_array_equal(back[name], array)
    assert read_header(path)[0].tensors == manifest.tensors
    assert manifest.digest == data_digest(path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_digest_is_sha256_of_raw_bytes_in_manifest_order(tmp_path: Path) -> None:
    arrays: dict[str, np.ndarray] = {
        "b": np.arange(4, dtype=np.int32),
        "a": np.ones((2, 2), dtype=np.float64),
    }

    manifest = write_safetensors(tmp_path / "m.safetensors", arrays)

    expected = hashlib.sha256(arrays["b"].tobytes() + arrays["a"].tobytes()).hexdigest()
    assert manifest.digest == expected
    assert manifest.names == ["b", "a"]


def test_file_loads_with_safetensors_numpy(tmp_path: Path) -> None:
    arrays, dtypes = every_dtype_arrays()
    standard = {n: a for n, a in arrays.items() if dtypes.get(n) != "bfloat16"}
    path = tmp_path / "m.safetensors"

    write_safetensors(path, standard)
    loaded = safetensors.numpy.load_file(str(path))

    assert set(loaded) == set(standard)
    for name, array in standard.items():
        assert loaded[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded[name], array)


def test_bfloat16_file_loads_with_safetensors_torch(tmp_path: Path) -> None:
    # Prepare
    values = torch.randn(4, 6, dtype=torch.float32)
    bits = values.to(torch.bfloat16).view(torch.uint16).numpy()
    path = tmp_path / "m.safetensors"

    # Execute
    write_safetensors(path, {"w": bits, "f": values.numpy()}, {"w": "bfloat16"})
    loaded = safetensors.torch.load_file(str(path))

    # Assert
    assert loaded["w"].dtype == torch.bfloat16
    assert torch.equal(loaded["w"], values.to(torch.bfloat16))
    assert torch.equal(loaded["f"], values)


def test_reads_files_written_by_the_safetensors_library(tmp_path: Path) -> None:
    arrays: dict[str, np.ndarray] = {
        "z": np.arange(6, dtype=np.float16),
        "a": np.arange(3, dtype=np.int64),
        "m": np.ones(5, np.uint8),
    }
    path = tmp_path / "lib.safetensors"
    safetensors.numpy.save_file(arrays, str(path), metadata={"format": "pt"})

    manifest, _ = read_header(path)
    back = read_arrays(path)

    assert set(manifest.names) == set(arrays)
    assert read_metadata(path) == {"format": "pt"}
    for name, array in arrays.items():
        np.testing.assert_array_equal(back[name], array)
    expected = hashlib.sha256(b"".join(arrays[n].tobytes() for n in manifest.names)).hexdigest()
    assert data_digest(path) == expected


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x05\x00",
        b"\xff" * 16,
        (10).to_bytes(8, "little") + b"not json!!",
        (2).to_bytes(8, "little") + b"[]",
    ],
)
def test_rejects_file_that_is_not_safetensors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)

    with pytest.raises(FedtuneError) as err:
        read_header(path)

    assert err.value.code is ErrorCode.BAD_MANIFEST


def test_rejects_header_whose_offsets_do_not_match_the_data(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"a": np.ones(4, np.float32)})
    path.write_bytes(path.read_bytes()[:-4])  # truncated data section

    with pytest.raises(FedtuneError) as err:
        read_header(path)

    assert err.value.code is ErrorCode.BAD_MANIFEST


def test_iter_float32_matches_numpy_conversion_for_every_dtype(tmp_path: Path) -> None:
    # Prepare
    arrays, dtypes = every_dtype_arrays()
    path = tmp_path / "m.safetensors"
    manifest = write_safetensors(path, arrays, dtypes)
    expected = np.concatenate(
        [to_float32(arrays[t.name].reshape(-1), t.dtype) for t in manifest.tensors]
    ).astype(np.float32)

    # Execute
    pieces = list(iter_float32(path, chunk_elements=4))

    # Assert
    flat = np.concatenate([values for _, values in pieces])
    assert all(values.dtype == np.float32 and values.size <= 4 for _, values in pieces)
    assert [start for start, _ in pieces] == sorted(start for start, _ in pieces)
    for start, values in pieces:
        np.testing.assert_array_equal(values, expected[start : start + values.size])
    np.testing.assert_array_equal(flat, expected)
    bf16 = arrays["layer.bfloat16"]
    widened = torch.from_numpy(bf16.astype(np.int16)).view(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(read_arrays_float32(path)["layer.bfloat16"], widened)


def test_writer_writes_float32_slices_that_span_tensors(tmp_path: Path) -> None:
    # Prepare
    manifest = Manifest.of(
        [
            TensorSpec("a", "float16", (2, 3), 12),
            TensorSpec("gap", "float32", (0,), 0),
            TensorSpec("b", "bfloat16", (5,), 10),
            TensorSpec("c", "float64", (), 8),
        ]
    )
    values = np.arange(12, dtype=np.float32) * 0.5
    path = tmp_path / "out.safetensors"

    # Execute
    with SafetensorsFileWriter(path, manifest, metadata={"format": "pt"}) as writer:
        for start in range(0, 12, 5):
            writer.write_flat_float32(start, values[start : start + 5])
        writer.commit()

    # Assert
    back = read_arrays_float32(path)
    np.testing.assert_array_equal(back["a"].reshape(-1), values[:6])
    np.testing.assert_array_equal(back["b"], values[6:11])
    assert back["c"] == values[11]
    assert read_metadata(path) == {"format": "pt"}
    assert safetensors.torch.load_file(str(path))["b"].dtype == torch.bfloat16


def test_writer_discards_partial_file_on_exception(tmp_path: Path) -> None:
    manifest = Manifest.of([TensorSpec("a", "float32", (4,), 16)])
    path = tmp_path / "out.safetensors"

    with pytest.raises(RuntimeError), SafetensorsFileWriter(path, manifest) as writer:
        writer.write_bytes(0, 0, b"\x00" * 8)
        assert writer.partial_path.exists()
        raise RuntimeError("boom")

    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_bytes_that_overrun_a_tensor(tmp_path: Path) -> None:
    manifest = Manifest.of([TensorSpec("a", "int8", (4,), 4)])

    writer = SafetensorsFileWriter(tmp_path / "o.safetensors", manifest)
    with pytest.raises(FedtuneError) as err:
        writer.write_bytes(0, 2, b"abc")
    writer.discard()

    assert err.value.code is ErrorCode.INVALID_ARGUMENT
    assert list(tmp_path.iterdir()) == []


def test_iter_float32_handles_large_tensor_in_pieces(tmp_path: Path) -> None:
    big = array_of("float16", (300, 70))
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"big": big})

    pieces = list(iter_float32(path, chunk_elements=1000))

    assert len(pieces) == 21
    np.testing.assert_array_equal(np.concatenate([v for _, v in pieces]), big.reshape(-1).astype(np.float32))
