"""The blob store contract: any BlobStore implementation must pass BlobStoreContract."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from fedtune.errors import ErrorCode, FedtuneError
from storage.blobs import BlobStore, LocalBlobStore

PAYLOAD = b"fedtune tensors " * 1000
PAYLOAD_DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
MISSING_DIGEST = "0" * 64


class BlobStoreContract:
    """Subclass as `Test<Impl>` and implement `make_store` to run the contract on a store."""

    def make_store(self, tmp_path: Path) -> BlobStore:
        raise NotImplementedError

    @pytest.fixture
    def store(self, tmp_path: Path) -> BlobStore:
        return self.make_store(tmp_path)

    def test_put_bytes_returns_sha256_and_reads_back(self, store: BlobStore) -> None:
        digest = store.put_bytes(PAYLOAD)

        assert digest == PAYLOAD_DIGEST
        with store.open(digest) as handle:
            assert handle.read() == PAYLOAD
        assert store.local_path(digest).read_bytes() == PAYLOAD
        assert store.exists(digest)

    def test_put_stream_equals_put_of_the_joined_bytes(self, store: BlobStore) -> None:
        chunks = [PAYLOAD[i : i + 777] for i in range(0, len(PAYLOAD), 777)]

        assert store.put_stream(iter(chunks)) == PAYLOAD_DIGEST

    def test_put_file_keeps_source_unless_moved(self, store: BlobStore, tmp_path: Path) -> None:
        kept, moved = tmp_path / "kept.bin", tmp_path / "moved.bin"
        kept.write_bytes(PAYLOAD)
        moved.write_bytes(PAYLOAD + b"!")

        kept_digest = store.put_file(kept)
        moved_digest = store.put_file(moved, move=True)

        assert kept.exists() and not moved.exists()
        assert kept_digest == PAYLOAD_DIGEST
        assert store.local_path(moved_digest).read_bytes() == PAYLOAD + b"!"

    def test_same_content_twice_is_one_blob(self, store: BlobStore, tmp_path: Path) -> None:
        source = tmp_path / "t.bin"
        source.write_bytes(PAYLOAD)

        digests = {store.put_bytes(PAYLOAD), store.put_file(source), store.put_file(source, move=True)}

        assert digests == {PAYLOAD_DIGEST}
        assert store.local_path(PAYLOAD_DIGEST).read_bytes() == PAYLOAD

    def test_empty_blob_is_allowed(self, store: BlobStore) -> None:
        digest = store.put_stream([])

        assert digest == hashlib.sha256(b"").hexdigest()
        assert store.open(digest).read() == b""

    def test_missing_blob_is_not_found(self, store: BlobStore) -> None:
        assert not store.exists(MISSING_DIGEST)
        for read in (store.open, store.local_path):
            with pytest.raises(FedtuneError) as err:
                read(MISSING_DIGEST)
            assert err.value.code is ErrorCode.NOT_FOUND

    @pytest.mark.parametrize("digest", ["", "abc", "A" * 64, "g" * 64, "../" + "0" * 61, "0" * 65])
    def test_malformed_digest_is_invalid_argument(self, store: BlobStore, digest: str) -> None:
        for call in (store.open, store.local_path, store.exists, store.delete):
            with pytest.raises(FedtuneError) as err:
                call(digest)
            assert err.value.code is ErrorCode.INVALID_ARGUMENT

    def test_put_of_missing_file_is_not_found_and_stores_nothing(
        self, store: BlobStore, tmp_path: Path
    ) -> None:
        with pytest.raises(FedtuneError) as err:
            store.put_file(tmp_path / "absent.safetensors")

        assert err.value.code is ErrorCode.NOT_FOUND
        assert store.cleanup_partial() == 0

    def test_delete_removes_and_is_idempotent(self, store: BlobStore) -> None:
        digest = store.put_bytes(PAYLOAD)

        store.delete(digest)
        store.delete(digest)

        assert not store.exists(digest)

    def test_failing_stream_leaves_nothing_behind(self, store: BlobStore) -> None:
        def chunks():  # type: ignore[no-untyped-def]
            yield b"half a model"
            raise ConnectionError("worker went away")

        with pytest.raises(ConnectionError):
            store.put_stream(chunks())

        assert store.cleanup_partial() == 0
        assert not store.exists(hashlib.sha256(b"half a model").hexdigest())

    def test_concurrent_puts_of_the_same_content_agree(self, store: BlobStore) -> None:
        results: list[str] = []
        threads = [
            threading.Thread(target=lambda: results.append(store.put_bytes(PAYLOAD))) for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)

        assert results == [PAYLOAD_DIGEST] * 4
        assert store.open(PAYLOAD_DIGEST).read() == PAYLOAD


class TestLocalBlobStore(BlobStoreContract):
    def make_store(self, tmp_path: Path) -> BlobStore:
        return LocalBlobStore(tmp_path / "blobs", chunk_size=4096)

    def test_layout_is_sha256_prefix_dir_and_rest(self, tmp_path: Path) -> None:
        store = LocalBlobStore(tmp_path / "blobs")

        digest = store.put_bytes(PAYLOAD)

        assert store.local_path(digest) == tmp_path / "blobs" / "sha256" / digest[:2] / digest[2:]
        assert list(store.iter_digests()) == [digest]
        assert list((tmp_path / "blobs" / "tmp").iterdir()) == []

    def test_cleanup_partial_removes_dead_temp_files_only(self, tmp_path: Path) -> None:
        # Prepare: one leftover from a crashed put, one temp file a live put holds locked
        import fcntl

        store = LocalBlobStore(tmp_path / "blobs")
        (tmp_path / "blobs" / "tmp" / "put-dead.part").write_bytes(b"partial")
        live = tmp_path / "blobs" / "tmp" / "put-live.part"
        live_fd = os.open(live, os.O_CREAT | os.O_WRONLY)
        fcntl.flock(live_fd, fcntl.LOCK_EX)

        removed = store.cleanup_partial()

        assert removed == 1
        assert [p.name for p in (tmp_path / "blobs" / "tmp").iterdir()] == ["put-live.part"]
        os.close(live_fd)
        assert store.cleanup_partial() == 1

    def test_put_file_streams_in_bounded_chunks(self, tmp_path: Path) -> None:
        # Prepare: a source that records the largest read asked of it
        store = LocalBlobStore(tmp_path / "blobs", chunk_size=1024)
        source = tmp_path / "big.bin"
        source.write_bytes(os.urandom(64 * 1024))
        sizes: list[int] = []
        original_read = store.put_stream

        def spying_put_stream(chunks):  # type: ignore[no-untyped-def]
            def spy():  # type: ignore[no-untyped-def]
                for chunk in chunks:
                    sizes.append(len(chunk))
                    yield chunk

            return original_read(spy())

        store.put_stream = spying_put_stream  # type: ignore[method-assign]

        digest = store.put_file(source)

        assert digest == hashlib.sha256(source.read_bytes()).hexdigest()
        assert max(sizes) == 1024 and len(sizes) == 64

    def test_stored_blobs_are_read_only(self, tmp_path: Path) -> None:
        store = LocalBlobStore(tmp_path / "blobs")

        digest = store.put_bytes(PAYLOAD)

        assert store.local_path(digest).stat().st_mode & 0o222 == 0

    def test_a_move_with_the_writers_digest_does_not_read_the_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Prepare: the commit of a round knows the new version's sha256 as it wrote it (decision 41)
        store = LocalBlobStore(tmp_path / "blobs")
        source = tmp_path / "blobs" / "version.safetensors"  # on the store's filesystem
        source.write_bytes(PAYLOAD)

        def no_reading(*args: object, **kwargs: object) -> None:
            raise AssertionError("the file was read again")

        monkeypatch.setattr("storage.blobs.iter_file_chunks", no_reading)

        # Execute
        digest = store.put_file(source, move=True, digest=PAYLOAD_DIGEST)

        # Assert
        assert digest == PAYLOAD_DIGEST
        assert not source.exists()
        assert store.local_path(digest).read_bytes() == PAYLOAD

    def test_a_copy_checks_the_digest_it_was_given(self, tmp_path: Path) -> None:
        # Prepare
        store = LocalBlobStore(tmp_path / "blobs")
        source = tmp_path / "version.safetensors"
        source.write_bytes(PAYLOAD)

        # Execute / Assert
        assert store.put_file(source, digest=PAYLOAD_DIGEST) == PAYLOAD_DIGEST
        with pytest.raises(FedtuneError) as err:
            store.put_file(source, digest=MISSING_DIGEST)
        assert err.value.code is ErrorCode.STORAGE
        assert source.exists()  # not moved: the caller still has it
