"""Decision 41's per-byte savings keep their contracts: digests known as written, mapped reads equal to
copied reads, and the one-pass finite / max-magnitude check agreeing with the two-pass one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from fedtune.tensorstream.dtypes import finite_max_abs_raw, is_finite_raw, max_abs_raw, storage_array
from fedtune.tensorstream.manifest import Manifest, TensorSpec
from fedtune.tensorstream.safetensors_file import (
    SafetensorsFileWriter,
    data_digest,
    iter_float32,
    iter_float32_views,
    write_safetensors,
)
from tests.tensorstream.helpers import array_of

FLOATS = ("float32", "float16", "bfloat16", "float64")


def _manifest() -> Manifest:
    return Manifest.of(
        [
            TensorSpec("a", "float32", (1000,), 4000),
            TensorSpec("b", "float32", (0,), 0),
            TensorSpec("c", "bfloat16", (33,), 66),
            TensorSpec("d", "float32", (2049,), 8196),
        ]
    )


def test_a_writer_that_wrote_in_order_knows_the_file_and_data_digests(tmp_path: Path) -> None:
    # Prepare
    manifest = _manifest()
    values = np.random.default_rng(0).standard_normal(1000 + 33 + 2049).astype(np.float32)
    path = tmp_path / "new.safetensors"

    # Execute
    with SafetensorsFileWriter(path, manifest, digests=True) as writer:
        for start in range(0, values.size, 700):  # pieces that span tensors
            writer.write_flat_float32(start, values[start : start + 700])
    digests = writer.written_digests

    # Assert
    assert digests is not None
    assert digests.file == hashlib.sha256(path.read_bytes()).hexdigest()
    assert digests.data == data_digest(path)


def test_out_of_order_or_unrequested_writes_have_no_digests(tmp_path: Path) -> None:
    # Prepare
    manifest = _manifest()
    values = np.ones(1000 + 33 + 2049, dtype=np.float32)

    # Execute
    with SafetensorsFileWriter(tmp_path / "back.safetensors", manifest, digests=True) as backwards:
        backwards.write_flat_float32(2000, values[2000:])
        backwards.write_flat_float32(0, values[:2000])
    with SafetensorsFileWriter(tmp_path / "plain.safetensors", manifest) as plain:
        plain.write_flat_float32(0, values)
    with SafetensorsFileWriter(tmp_path / "short.safetensors", manifest, digests=True) as short:
        short.write_flat_float32(0, values[:10])

    # Assert
    assert backwards.written_digests is None
    assert plain.written_digests is None
    assert short.written_digests is None  # not every byte was written


@pytest.mark.parametrize("chunk", [1, 7, 512, 1 << 22])
def test_mapped_pieces_equal_the_copied_pieces_for_every_float_dtype(tmp_path: Path, chunk: int) -> None:
    # Prepare
    arrays = {f"t.{name}": array_of(name, (37, 11), seed=i) for i, name in enumerate(FLOATS)}
    arrays["empty"] = np.zeros((0,), dtype=np.float32)
    path = tmp_path / "m.safetensors"
    write_safetensors(path, arrays, {f"t.{name}": name for name in FLOATS})

    # Execute
    copied = [(start, values.copy()) for start, values in iter_float32(path, chunk)]
    mapped = [(start, np.array(values)) for start, values in iter_float32_views(path, chunk)]

    # Assert
    assert [s for s, _ in mapped] == [s for s, _ in copied]
    for (_, a), (_, b) in zip(mapped, copied, strict=True):
        assert a.dtype == np.float32
        assert np.array_equal(a, b)


def test_a_mapped_piece_is_read_only(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"a": np.arange(10, dtype=np.float32)})

    # Execute
    _, piece = next(iter(iter_float32_views(path)))

    # Assert
    with pytest.raises(ValueError, match="read-only"):
        piece[0] = 1.0


@pytest.mark.parametrize("dtype", [*FLOATS, "int32", "uint8"])
@pytest.mark.parametrize("poison", [None, np.nan, np.inf, -np.inf, -7e30])
def test_the_one_pass_check_agrees_with_finite_then_max_abs(dtype: str, poison: float | None) -> None:
    # Prepare
    raw = storage_array(array_of(dtype, (64,), seed=3), dtype).copy()
    if poison is not None and dtype in FLOATS:
        poisoned = np.array([poison], dtype=np.float32)
        if dtype == "bfloat16":
            raw[17] = poisoned.view(np.uint32)[0] >> 16
        else:
            with np.errstate(over="ignore"):  # -7e30 is -inf in float16
                raw[17] = poisoned.astype(raw.dtype)[0]

    # Execute
    found = finite_max_abs_raw(raw, dtype)

    # Assert
    if not is_finite_raw(raw, dtype):
        assert found is None
    else:
        assert found == max_abs_raw(raw, dtype)


def test_the_hash_threads_end_with_the_writer_committed_or_discarded(tmp_path: Path) -> None:
    # Prepare
    import threading

    manifest = _manifest()
    values = np.ones(1000 + 33 + 2049, dtype=np.float32)

    # Execute
    with SafetensorsFileWriter(tmp_path / "kept.safetensors", manifest, digests=True) as kept:
        kept.write_flat_float32(0, values)
    with (
        pytest.raises(RuntimeError),
        SafetensorsFileWriter(tmp_path / "x.safetensors", manifest, digests=True) as x,
    ):
        x.write_flat_float32(0, values[:100])
        raise RuntimeError("the strategy failed midway")

    # Assert
    assert kept.written_digests is not None
    assert not (tmp_path / "x.safetensors.partial").exists()
    assert not [t for t in threading.enumerate() if t.name.startswith("fedtune-hash")]
