"""Connection: retries, resumable downloads and uploads, against the fake coordinator."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedtune.compression.encoding import UpdateEncoding
from fedtune.tensorstream.decoder import StreamDecoder
from fedtune.tensorstream.safetensors_file import partial_path, read_arrays
from tests.daemon.fake_coordinator import FakeCoordinator
from worker.connection import Connection
from worker.retry import Backoff, RpcFailure, is_transient


@dataclass
class Output:  # same fields as worker.task_io.TaskOutput
    arrays: dict[str, np.ndarray]
    num_examples: int = 10
    metrics: dict[str, float] = field(default_factory=lambda: {"loss": 0.5})
    files: dict[str, bytes] = field(default_factory=lambda: {"adapter_config.json": b"{}"})
    encoding: UpdateEncoding = field(default_factory=UpdateEncoding)
    dtypes: dict[str, str] = field(default_factory=dict)


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "a.weight": rng.standard_normal((16, 40)).astype(np.float32),  # 2560 bytes: 3 chunks of <=1024
        "b.bias": rng.standard_normal(300).astype(np.float32),  # 1200 bytes: 2 chunks
        "c.weight": rng.standard_normal((8, 8)).astype(np.float16),  # 128 bytes
    }


def _assert_same(path: Path, expected: dict[str, np.ndarray]) -> None:
    got = read_arrays(path)
    assert list(got) == list(expected)
    for name, array in expected.items():
        assert got[name].tobytes() == array.tobytes()


def test_fetch_resumes_at_decoder_position_after_stream_breaks(
    fake: FakeCoordinator, connection: Connection, tmp_path: Path
) -> None:
    # Prepare: the first stream drops after 4 chunks (a.weight's 3 + 1 of b.bias)
    arrays = _arrays()
    manifest = fake.servicer.add_version("v1", arrays)
    fake.servicer.break_fetch_after = [4]
    # Execute
    path = connection.fetch_version("v1", manifest, tmp_path / "downloads")
    # Assert: the second request starts at tensor 1, byte 1024; the file holds identical bytes
    assert fake.servicer.fetch_requests == [("v1", 0, 0), ("v1", 1, 1024)]
    _assert_same(path, arrays)
    assert not partial_path(path).exists()


def test_fetch_resumes_across_several_breaks(
    fake: FakeCoordinator, connection: Connection, tmp_path: Path
) -> None:
    arrays = _arrays(1)
    manifest = fake.servicer.add_version("v1", arrays)
    fake.servicer.break_fetch_after = [1, 0, 2]
    path = connection.fetch_version("v1", manifest, tmp_path / "downloads")
    assert [r[1:] for r in fake.servicer.fetch_requests] == [(0, 0), (0, 1024), (0, 1024), (1, 0)]
    _assert_same(path, arrays)


def test_fetch_uses_the_cache_for_a_version_already_downloaded(
    fake: FakeCoordinator, connection: Connection, tmp_path: Path
) -> None:
    manifest = fake.servicer.add_version("v1", _arrays())
    first = connection.fetch_version("v1", manifest, tmp_path / "downloads")
    second = connection.fetch_version("v1", manifest, tmp_path / "downloads")
    assert first == second
    assert fake.servicer.calls["FetchTensors"] == 1


def test_fetch_continues_a_partial_file_left_by_an_earlier_process(
    fake: FakeCoordinator, connection: Connection, tmp_path: Path
) -> None:
    # Prepare: a partial download of tensor 0 made by a previous run (checkpointed, then closed)
    arrays = _arrays()
    manifest = fake.servicer.add_version("v1", arrays)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    out = downloads / f"v1-{manifest.digest[:16]}.safetensors"
    from fedtune.tensorstream.encoder import iter_chunks_from_arrays

    decoder = StreamDecoder(manifest, out)
    for chunk in list(iter_chunks_from_arrays(arrays, manifest, chunk_bytes=1024))[:3]:
        decoder.add(chunk)
    decoder.close()
    # Execute
    path = connection.fetch_version("v1", manifest, downloads)
    # Assert
    assert fake.servicer.fetch_requests == [("v1", 1, 0)]
    _assert_same(path, arrays)


def test_fetch_does_not_retry_not_found(
    fake: FakeCoordinator, connection: Connection, tmp_path: Path
) -> None:
    manifest = fake.servicer.add_version("v1", _arrays())
    fake.servicer.fail["FetchTensors"] = [grpc.StatusCode.NOT_FOUND]
    with pytest.raises(RpcFailure) as err:
        connection.fetch_version("v1", manifest, tmp_path / "downloads")
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert fake.servicer.calls["FetchTensors"] == 1


def test_push_resumes_from_the_coordinators_position_after_stream_breaks(
    fake: FakeCoordinator, connection: Connection
) -> None:
    # Prepare: the first upload drops after the coordinator took 4 chunks
    arrays = _arrays(2)
    fake.servicer.break_push_after = [4]
    # Execute
    answer = connection.push_update("t1", Output(arrays))  # type: ignore[arg-type]
    # Assert: one resume, header.resume set, starting at tensor 1 byte 1024; bytes identical
    upload = fake.servicer.uploads["t1"]
    assert [h.resume for h in upload.headers] == [False, True]
    assert upload.first_chunks == [(0, 0), (1, 1024)]
    assert fake.servicer.calls["GetUploadStatus"] == 1
    assert answer.update_id == "u-t1"
    _assert_same(fake.servicer.spool / "t1.safetensors", arrays)
    assert upload.headers[1].files["adapter_config.json"] == b"{}"
    assert upload.headers[1].num_examples == 10


def test_push_restarts_from_zero_when_the_coordinator_holds_nothing(
    fake: FakeCoordinator, connection: Connection
) -> None:
    arrays = _arrays(3)
    fake.servicer.break_push_after = [2]
    fake.servicer.forget_upload_on_break = True
    connection.push_update("t1", Output(arrays))  # type: ignore[arg-type]
    upload = fake.servicer.uploads["t1"]
    assert [h.resume for h in upload.headers] == [False]
    assert upload.first_chunks == [(0, 0)]
    _assert_same(fake.servicer.spool / "t1.safetensors", arrays)


def test_push_does_not_retry_invalid_argument(fake: FakeCoordinator, connection: Connection) -> None:
    fake.servicer.fail["PushUpdate"] = [grpc.StatusCode.INVALID_ARGUMENT]
    with pytest.raises(RpcFailure) as err:
        connection.push_update("t1", Output(_arrays()))  # type: ignore[arg-type]
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "injected" in err.value.details
    assert fake.servicer.calls["PushUpdate"] == 1


def test_unary_calls_retry_unavailable_then_succeed(fake: FakeCoordinator, connection: Connection) -> None:
    fake.servicer.fail["Register"] = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED]
    worker_id = connection.register({"kind": "cpu"}, {"train.jsonl": 3}, "0.1.0")
    assert worker_id == "w-3"
    assert connection.heartbeat_seconds == 0.2
    assert fake.servicer.calls["Register"] == 3


def test_calls_carry_site_and_bearer_token(fake: FakeCoordinator, connection: Connection) -> None:
    connection.register({"kind": "cpu"}, {}, "0.1.0")
    connection.pull_task(0.1)
    last = fake.servicer.metadata[-1]
    assert last["x-fedtune-site"] == "site-a"
    assert last["authorization"] == "Bearer secret-a"


def test_unary_calls_do_not_retry_permission_denied(fake: FakeCoordinator, connection: Connection) -> None:
    fake.servicer.fail["Register"] = [grpc.StatusCode.PERMISSION_DENIED]
    with pytest.raises(RpcFailure):
        connection.register({"kind": "cpu"}, {}, "0.1.0")
    assert fake.servicer.calls["Register"] == 1


def test_backoff_grows_exponentially_and_stays_under_the_cap() -> None:
    backoff = Backoff(base_seconds=1.0, cap_seconds=5.0, rng=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    jittered = Backoff(base_seconds=1.0, cap_seconds=5.0)
    assert all(0 < jittered.next_delay() <= 5.0 for _ in range(50))


def test_a_busy_coordinator_is_retried_with_backoff(fake: FakeCoordinator, connection: Connection) -> None:
    # RESOURCE_EXHAUSTED "busy" (a per-site or server limit) is transient: the worker backs off and retries
    fake.servicer.fail["PullTask"] = [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.RESOURCE_EXHAUSTED]
    connection.register({"kind": "cpu"}, {}, "0.1.0")
    assert connection.pull_task(0.1) is None
    assert fake.servicer.calls["PullTask"] == 3


def test_too_large_is_final_but_busy_is_transient() -> None:
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    assert is_transient(exhausted, "busy: site 'a' already has 4 open PullTask calls")
    assert not is_transient(exhausted, "too_large: update of 9 bytes exceeds max_update_bytes (8)")
    assert not is_transient(grpc.StatusCode.INVALID_ARGUMENT, "busy: not a status that retries")
