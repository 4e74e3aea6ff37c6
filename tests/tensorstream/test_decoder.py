from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.decoder import StreamDecoder
from fedtune.tensorstream.encoder import iter_chunks_from_arrays, manifest_for_arrays
from fedtune.tensorstream.manifest import Chunk, Manifest, TensorSpec
from fedtune.tensorstream.safetensors_file import data_digest, read_arrays
from tests.tensorstream.helpers import array_of, every_dtype_arrays


def _stream() -> tuple[dict[str, np.ndarray], Manifest, list[Chunk]]:
    arrays = {
        "a": array_of("float32", (4, 8)),
        "empty": np.zeros((0,), np.float32),
        "b": array_of("bfloat16", (10,), seed=1),
        "c": array_of("int64", (3,), seed=2),
    }
    manifest = manifest_for_arrays(arrays, {"b": "bfloat16"})
    return arrays, manifest, list(iter_chunks_from_arrays(arrays, manifest, chunk_bytes=16))


def _chunk(tensor_index: int, offset: int, data: bytes) -> Chunk:
    return Chunk(tensor_index, offset, data, zlib.crc32(data))


def test_decodes_every_dtype_into_identical_file(tmp_path: Path) -> None:
    # Prepare
    arrays, dtypes = every_dtype_arrays()
    manifest = manifest_for_arrays(arrays, dtypes)
    out = tmp_path / "out.safetensors"
    decoder = StreamDecoder(manifest, out)

    # Execute
    for chunk in iter_chunks_from_arrays(arrays, manifest, chunk_bytes=8):
        decoder.add(chunk)
    digest = decoder.finish()

    # Assert
    assert digest == manifest.digest == data_digest(out)
    back = read_arrays(out)
    for name, array in arrays.items():
        np.testing.assert_array_equal(back[name], array)
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]


def test_tracks_position_across_empty_tensors(tmp_path: Path) -> None:
    _, manifest, chunks = _stream()
    decoder = StreamDecoder(manifest, tmp_path / "out.safetensors")

    positions = []
    for chunk in chunks:
        positions.append(decoder.next_position)
        decoder.add(chunk)

    assert positions == [(c.tensor_index, c.offset) for c in chunks]
    assert decoder.next_position == (4, 0) and decoder.complete
    assert decoder.received_bytes == manifest.total_bytes
    decoder.finish()


def test_large_tensor_in_many_chunks_loads_with_safetensors(tmp_path: Path) -> None:
    arrays = {"w": array_of("float32", (128, 96)), "bias": array_of("float16", (96,))}
    manifest = manifest_for_arrays(arrays)
    out = tmp_path / "out.safetensors"
    decoder = StreamDecoder(manifest, out)

    for chunk in iter_chunks_from_arrays(arrays, manifest, chunk_bytes=512):
        decoder.add(chunk)
    decoder.finish()

    loaded = safetensors.numpy.load_file(str(out))
    np.testing.assert_array_equal(loaded["w"], arrays["w"])
    np.testing.assert_array_equal(loaded["bias"], arrays["bias"])


def _corrupt(chunks: list[Chunk]) -> Chunk:
    return dataclasses.replace(chunks[0], crc32=chunks[0].crc32 ^ 1)


def _misaligned(chunks: list[Chunk]) -> Chunk:
    return _chunk(0, 0, chunks[0].data[:3])


BAD_FIRST_CHUNKS: list[tuple[str, Callable[[list[Chunk]], Chunk], ErrorCode]] = [
    ("bad crc", _corrupt, ErrorCode.CHECKSUM_MISMATCH),
    ("out of order", lambda cs: cs[1], ErrorCode.BAD_CHUNK),
    ("index out of range", lambda cs: _chunk(9, 0, b"\x00" * 4), ErrorCode.BAD_CHUNK),
    ("negative offset", lambda cs: _chunk(0, -4, b"\x00" * 4), ErrorCode.BAD_CHUNK),
    ("misaligned", _misaligned, ErrorCode.BAD_CHUNK),
    ("overrun", lambda cs: _chunk(0, 120, b"\x00" * 16), ErrorCode.BAD_CHUNK),
    ("empty", lambda cs: _chunk(0, 0, b""), ErrorCode.BAD_CHUNK),
    ("oversized", lambda cs: _chunk(0, 0, b"\x00" * 128), ErrorCode.TOO_LARGE),
    ("nan", lambda cs: _chunk(0, 0, np.array([1, np.nan, 2, 3], np.float32).tobytes()), ErrorCode.NON_FINITE),
    ("inf", lambda cs: _chunk(0, 0, np.array([np.inf, 0, 0, 0], np.float32).tobytes()), ErrorCode.NON_FINITE),
]


@pytest.mark.parametrize(
    ("case", "make_chunk", "code"), BAD_FIRST_CHUNKS, ids=[c[0] for c in BAD_FIRST_CHUNKS]
)
def test_rejects_bad_chunk_with_its_error_code_and_writes_nothing(
    tmp_path: Path, case: str, make_chunk: Callable[[list[Chunk]], Chunk], code: ErrorCode
) -> None:
    # Prepare
    _, manifest, chunks = _stream()
    out = tmp_path / "out.safetensors"
    decoder = StreamDecoder(manifest, out, max_chunk_bytes=64)

    # Execute
    with pytest.raises(FedtuneError) as err:
        decoder.add(make_chunk(chunks))

    # Assert
    assert err.value.code is code
    assert decoder.received_bytes == 0 and decoder.next_position == (0, 0)
    assert not out.exists()
    for chunk in chunks:  # the stream is still usable after a rejected chunk
        decoder.add(chunk)
    assert decoder.finish() == manifest.digest


def test_rejects_nan_in_bfloat16_tensor(tmp_path: Path) -> None:
    _, manifest, chunks = _stream()
    decoder = StreamDecoder(manifest, tmp_path / "out.safetensors")
    first_b = next(i for i, c in enumerate(chunks) if c.tensor_index == 2)
    for chunk in chunks[:first_b]:
        decoder.add(chunk)
    nan_bits = np.array([0x3F80, 0x7FC0, 0, 0], dtype="<u2").tobytes()  # 1.0, NaN

    with pytest.raises(FedtuneError) as err:
        decoder.add(_chunk(2, 0, nan_bits))

    assert err.value.code is ErrorCode.NON_FINITE
    decoder.abort()
    assert list(tmp_path.iterdir()) == []


def test_accepts_nan_when_finite_check_is_off(tmp_path: Path) -> None:
    arrays = {"a": np.array([np.nan, np.inf], np.float32)}
    manifest = manifest_for_arrays(arrays)
    decoder = StreamDecoder(manifest, tmp_path / "out.safetensors", check_finite=False)

    for chunk in iter_chunks_from_arrays(arrays, manifest):
        decoder.add(chunk)

    assert decoder.finish() == manifest.digest


def test_rejects_duplicated_chunk(tmp_path: Path) -> None:
    _, manifest, chunks = _stream()
    decoder = StreamDecoder(manifest, tmp_path / "out.safetensors")
    decoder.add(chunks[0])
    decoder.add(chunks[1])

    with pytest.raises(FedtuneError) as err:
        decoder.add(chunks[1])

    assert err.value.code is ErrorCode.BAD_CHUNK
    assert "duplicated" in err.value.message
    assert decoder.received_bytes == 32


def test_finish_reports_first_missing_tensor_and_leaves_nothing(tmp_path: Path) -> None:
    _, manifest, chunks = _stream()
    decoder = StreamDecoder(manifest, tmp_path / "out.safetensors")
    for chunk in chunks:
        if chunk.tensor_index == 0:
            decoder.add(chunk)

    with pytest.raises(FedtuneError) as err:
        decoder.finish()

    assert err.value.code is ErrorCode.INCOMPLETE_STREAM
    assert "'b'" in err.value.message
    assert list(tmp_path.iterdir()) == []


def test_finish_rejects_wrong_digest_and_leaves_nothing(tmp_path: Path) -> None:
    _, manifest, chunks = _stream()
    wrong = Manifest(manifest.tensors, "0" * 64)
    decoder = StreamDecoder(wrong, tmp_path / "out.safetensors")
    for chunk in chunks:
        decoder.add(chunk)

    with pytest.raises(FedtuneError) as err:
        decoder.finish()

    assert err.value.code is ErrorCode.CHECKSUM_MISMATCH
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "manifest",
    [
        Manifest.of([TensorSpec("a", "float32", (2,), 8)]),  # no digest
        Manifest.of([TensorSpec("a", "float32", (2,), 9)], "0" * 64),
        Manifest.of([TensorSpec("a", "int8", (2,), 2), TensorSpec("a", "int8", (2,), 2)], "0" * 64),
    ],
)
def test_rejects_invalid_manifest(tmp_path: Path, manifest: Manifest) -> None:
    with pytest.raises(FedtuneError) as err:
        StreamDecoder(manifest, tmp_path / "out.safetensors")

    assert err.value.code is ErrorCode.BAD_MANIFEST
    assert list(tmp_path.iterdir()) == []


def test_only_partial_and_progress_exist_before_finish(tmp_path: Path) -> None:
    _, manifest, chunks = _stream()
    decoder = StreamDecoder(manifest, tmp_path / "out.safetensors")
    decoder.add(chunks[0])

    names = sorted(p.name for p in tmp_path.iterdir())
    decoder.abort()

    assert names == ["out.safetensors.partial", "out.safetensors.progress"]
    assert list(tmp_path.iterdir()) == []


def test_resumes_after_decoder_is_dropped_mid_stream(tmp_path: Path) -> None:
    # Prepare: a decoder receives part of the stream, then is dropped without close()
    arrays, manifest, chunks = _stream()
    out = tmp_path / "out.safetensors"
    first = StreamDecoder(manifest, out, sync_every_bytes=0)
    for chunk in chunks[:5]:
        first.add(chunk)
    del first

    # Execute: resume where the sidecar says and send the rest
    position = StreamDecoder.peek_progress(out)
    decoder = StreamDecoder.resume(manifest, out)
    assert position == decoder.next_position
    rest = list(iter_chunks_from_arrays(arrays, manifest, 16, position[0], position[1]))
    for chunk in rest:
        decoder.add(chunk)
    digest = decoder.finish()

    # Assert
    assert position == (chunks[5].tensor_index, chunks[5].offset)
    assert digest == manifest.digest == data_digest(out)
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]
    assert StreamDecoder.peek_progress(out) is None


def test_progress_only_claims_synced_bytes(tmp_path: Path) -> None:
    # Prepare: with a large sync interval only close() records progress
    arrays, manifest, chunks = _stream()
    out = tmp_path / "out.safetensors"
    first = StreamDecoder(manifest, out)
    for chunk in chunks[:3]:
        first.add(chunk)
    assert StreamDecoder.peek_progress(out) == (0, 0)

    # Execute
    first.close()
    decoder = StreamDecoder.resume(manifest, out)
    for chunk in chunks[3:]:
        decoder.add(chunk)

    # Assert
    assert decoder.received_bytes == manifest.total_bytes
    assert decoder.finish() == manifest.digest


def test_close_records_progress_for_resume(tmp_path: Path) -> None:
    _, manifest, chunks = _stream()
    out = tmp_path / "out.safetensors"
    decoder = StreamDecoder(manifest, out)
    for chunk in chunks[:3]:
        decoder.add(chunk)

    decoder.close()

    assert StreamDecoder.peek_progress(out) == (chunks[3].tensor_index, chunks[3].offset)
    assert StreamDecoder.resume(manifest, out).received_bytes == 48


def test_resume_rejects_another_manifest_and_missing_partial(tmp_path: Path) -> None:
    _, manifest, chunks = _stream()
    out = tmp_path / "out.safetensors"
    other = manifest_for_arrays({"x": np.zeros(3, np.int8)})
    StreamDecoder(manifest, out).close()

    with pytest.raises(FedtuneError) as wrong:
        StreamDecoder.resume(other, out)
    with pytest.raises(FedtuneError) as missing:
        StreamDecoder.resume(manifest, tmp_path / "nothing.safetensors")

    assert wrong.value.code is ErrorCode.BAD_MANIFEST
    assert missing.value.code is ErrorCode.NOT_FOUND


def test_resume_from_an_earlier_position_rewinds_and_finishes_with_the_right_digest(tmp_path: Path) -> None:
    # Prepare: the decoder holds 6 chunks; the client only knows about 3 (a stale status)
    arrays, manifest, chunks = _stream()
    out = tmp_path / "out.safetensors"
    first = StreamDecoder(manifest, out)
    for chunk in chunks[:6]:
        first.add(chunk)
    first.close()
    decoder = StreamDecoder.resume(manifest, out)

    # Execute: the client re-sends from chunk 3
    decoder.rewind_to(chunks[3].tensor_index, chunks[3].offset)
    for chunk in chunks[3:]:
        decoder.add(chunk)
    digest = decoder.finish()

    # Assert
    assert digest == manifest.digest == data_digest(out)


def test_rewind_cannot_skip_ahead(tmp_path: Path) -> None:
    _, manifest, chunks = _stream()
    decoder = StreamDecoder(manifest, tmp_path / "out.safetensors")
    for chunk in chunks[:2]:
        decoder.add(chunk)

    with pytest.raises(FedtuneError) as gap:
        decoder.rewind_to(chunks[4].tensor_index, chunks[4].offset)

    assert gap.value.code is ErrorCode.BAD_CHUNK
    assert decoder.next_position == (chunks[2].tensor_index, chunks[2].offset)
