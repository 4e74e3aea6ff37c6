from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.dtypes import WIRE_DTYPES
from fedtune.tensorstream.encoder import (
    iter_chunks_from_arrays,
    iter_chunks_from_file,
    manifest_for_arrays,
    manifest_for_file,
)
from fedtune.tensorstream.safetensors_file import write_safetensors
from tests.tensorstream.helpers import array_of, every_dtype_arrays


def test_manifest_for_arrays_equals_manifest_for_written_file(tmp_path: Path) -> None:
    arrays, dtypes = every_dtype_arrays()
    path = tmp_path / "m.safetensors"
    write_safetensors(path, arrays, dtypes)

    from_arrays = manifest_for_arrays(arrays, dtypes)
    from_file = manifest_for_file(path)

    assert from_arrays == from_file
    assert len(from_arrays.digest) == 64


def test_array_and_file_chunks_are_identical_and_cover_every_byte(tmp_path: Path) -> None:
    # Prepare
    arrays, dtypes = every_dtype_arrays()
    path = tmp_path / "m.safetensors"
    manifest = write_safetensors(path, arrays, dtypes)

    # Execute
    from_arrays = list(iter_chunks_from_arrays(arrays, manifest, chunk_bytes=7))
    from_file = list(iter_chunks_from_file(path, chunk_bytes=7))

    # Assert
    assert from_arrays == from_file
    empty = manifest.names.index("empty")
    assert all(c.tensor_index != empty for c in from_arrays)
    for c in from_arrays:
        itemsize = WIRE_DTYPES[manifest.tensors[c.tensor_index].dtype].itemsize
        assert (
            len(c.data) % itemsize == 0 and c.offset % itemsize == 0 and 0 < len(c.data) <= max(7, itemsize)
        )
        assert c.crc32 == zlib.crc32(c.data)
    for index, spec in enumerate(manifest.tensors):
        joined = b"".join(c.data for c in from_arrays if c.tensor_index == index)
        assert joined == np.ascontiguousarray(arrays[spec.name]).tobytes()


def test_large_tensor_is_cut_into_many_chunks(tmp_path: Path) -> None:
    big = array_of("float32", (64, 64))
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"big": big})

    chunks = list(iter_chunks_from_file(path, chunk_bytes=1024))

    assert [c.offset for c in chunks] == list(range(0, big.nbytes, 1024))
    assert b"".join(c.data for c in chunks) == big.tobytes()


def test_starts_from_a_resume_position(tmp_path: Path) -> None:
    arrays: dict[str, np.ndarray] = {"a": np.arange(10, dtype=np.int32), "b": np.arange(6, dtype=np.int16)}
    path = tmp_path / "m.safetensors"
    manifest = write_safetensors(path, arrays)

    chunks = list(iter_chunks_from_file(path, chunk_bytes=16, start_tensor=0, start_offset=24))
    tail = list(iter_chunks_from_arrays(arrays, manifest, chunk_bytes=16, start_tensor=2))

    assert [(c.tensor_index, c.offset) for c in chunks] == [(0, 24), (1, 0)]
    assert tail == []


@pytest.mark.parametrize(
    ("start_tensor", "start_offset", "chunk_bytes"),
    [(-1, 0, 16), (3, 0, 16), (0, 2, 16), (0, 44, 16), (0, -4, 16), (2, 4, 16), (0, 0, 0)],
)
def test_rejects_invalid_start_position(
    tmp_path: Path, start_tensor: int, start_offset: int, chunk_bytes: int
) -> None:
    arrays: dict[str, np.ndarray] = {"a": np.arange(10, dtype=np.int32), "b": np.arange(6, dtype=np.int16)}
    path = tmp_path / "m.safetensors"
    manifest = write_safetensors(path, arrays)

    with pytest.raises(FedtuneError) as from_file:
        list(iter_chunks_from_file(path, chunk_bytes, start_tensor, start_offset))
    with pytest.raises(FedtuneError) as from_arrays:
        list(iter_chunks_from_arrays(arrays, manifest, chunk_bytes, start_tensor, start_offset))

    assert from_file.value.code is ErrorCode.INVALID_ARGUMENT
    assert from_arrays.value.code is ErrorCode.INVALID_ARGUMENT


def test_rejects_arrays_that_do_not_match_the_manifest() -> None:
    manifest = manifest_for_arrays({"a": np.zeros(4, np.float32)})

    with pytest.raises(FedtuneError) as err:
        list(iter_chunks_from_arrays({"a": np.zeros(5, np.float32)}, manifest))

    assert err.value.code is ErrorCode.INVALID_ARGUMENT


def test_rejects_numpy_dtype_without_wire_dtype() -> None:
    with pytest.raises(FedtuneError) as err:
        manifest_for_arrays({"a": np.zeros(4, np.complex64)})

    assert err.value.code is ErrorCode.BAD_MANIFEST
