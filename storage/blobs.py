"""Content-addressed blob store: tensors and side files, named by the sha256 of their bytes.

``BlobStore`` is the interface (an S3-compatible store can implement it later);
``LocalBlobStore`` keeps blobs on local disk as ``root/sha256/ab/cdef...``.

Durability: a put writes to a temp file under ``root/tmp/``, fsyncs it, renames it into place
and fsyncs the directory, so when a put returns the blob survives a power cut, and a blob
path never names a partial file. A put that dies midway leaves only its temp file, which
``cleanup_partial()`` removes (it skips temp files that a live put still holds locked).
Blobs are immutable: the same content put twice is one file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fedtune.errors import ErrorCode, FedtuneError
from storage.file_lock import exclusive_file_lock

CHUNK_SIZE = 1 << 20
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")


def validate_digest(digest: str) -> str:
    """Return `digest` if it is a sha256 hex digest (64 lowercase hex characters), else raise."""
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"malformed blob digest {digest!r}: expected 64 lowercase hex characters (a sha256)",
        )
    return digest


def iter_file_chunks(source: BinaryIO, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    while chunk := source.read(chunk_size):
        yield chunk


class BlobStore(ABC):
    """Immutable blobs addressed by the sha256 hex digest of their content."""

    @abstractmethod
    def put_file(self, source: Path, *, move: bool = False, digest: str | None = None) -> str:
        """Store the file's content and return its digest. `move=True` consumes `source`.

        `digest`: the sha256 of the file as its writer computed it (e.g. ``WrittenDigests.file``). A
        store may then skip reading the file again; one that reads it anyway checks it."""

    @abstractmethod
    def put_stream(self, chunks: Iterable[bytes]) -> str:
        """Store the concatenated chunks and return their digest (memory: one chunk)."""

    def put_bytes(self, data: bytes) -> str:
        return self.put_stream([data])

    @abstractmethod
    def open(self, digest: str) -> BinaryIO:
        """Open the blob for reading; FedtuneError(NOT_FOUND) if it is not stored."""

    @abstractmethod
    def local_path(self, digest: str) -> Path:
        """A readable local file holding the blob (for memory-mapped or piecewise reads)."""

    @abstractmethod
    def exists(self, digest: str) -> bool: ...

    @abstractmethod
    def delete(self, digest: str) -> None:
        """Remove the blob; deleting a blob that is not stored is not an error."""

    @abstractmethod
    def cleanup_partial(self) -> int:
        """Remove leftovers of puts that died midway; return how many were removed."""

    @abstractmethod
    def iter_blobs(self) -> Iterator[BlobInfo]:
        """Every stored blob with its size and the last time it was put (for usage and collection)."""

    @abstractmethod
    def delete_if_older(self, digest: str, cutoff: float) -> int | None:
        """Delete the blob if nobody put it since `cutoff` (unix seconds): its size, or None if kept.

        A put of content already stored refreshes that time under the same lock, so a collector
        that decided from an older list of references never deletes a blob a commit just put."""


@dataclass(frozen=True)
class BlobInfo:
    digest: str
    size: int
    put_at: float  # unix seconds of the last put of this content


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _storage_error(action: str, err: OSError) -> FedtuneError:
    return FedtuneError(ErrorCode.STORAGE, f"blob store could not {action}: {err.strerror or err}")


class LocalBlobStore(BlobStore):
    def __init__(self, root: Path, *, chunk_size: int = CHUNK_SIZE) -> None:
        self.root = Path(root)
        self.chunk_size = chunk_size
        self._blobs_dir = self.root / "sha256"
        self._tmp_dir = self.root / "tmp"
        self._blobs_dir.mkdir(parents=True, exist_ok=True)
        self._tmp_dir.mkdir(parents=True, exist_ok=True)
        # Held (flock, so across threads and processes) while a put installs or a collector deletes.
        self._lock_path = self.root / "install.lock"

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    def _path(self, digest: str) -> Path:
        validate_digest(digest)
        return self._blobs_dir / digest[:2] / digest[2:]

    # -- writes -----------------------------------------------------------------------------

    def put_stream(self, chunks: Iterable[bytes]) -> str:
        try:
            fd, tmp_name = tempfile.mkstemp(dir=self._tmp_dir, prefix="put-", suffix=".part")
        except OSError as err:
            raise _storage_error("create a temp file", err) from err
        tmp_path = Path(tmp_name)
        try:
            # The lock tells cleanup_partial() that a live put owns this file; the kernel drops
            # it when the process dies, however it dies.
            fcntl.flock(fd, fcntl.LOCK_EX)
            hasher = hashlib.sha256()
            with os.fdopen(fd, "wb", closefd=False) as out:
                # Errors raised by `chunks` itself (the caller's source) pass through unchanged.
                for chunk in chunks:
                    hasher.update(chunk)
                    self._write(out, chunk)
                self._write(out, b"", sync=True)
            digest = hasher.hexdigest()
            try:
                self._install(tmp_path, digest)
            except OSError as err:
                raise _storage_error(f"store blob {digest}", err) from err
            return digest
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()  # only still there if the put failed
            os.close(fd)

    @staticmethod
    def _write(out: BinaryIO, chunk: bytes, *, sync: bool = False) -> None:
        try:
            out.write(chunk)
            if sync:
                out.flush()
                os.fsync(out.fileno())
        except OSError as err:
            raise _storage_error("write a blob", err) from err

    def put_file(self, source: Path, *, move: bool = False, digest: str | None = None) -> str:
        """With `move` on the blob store's filesystem the file is renamed into place, not copied;
        with `digest` too it is not read at all (the writer's digest is trusted: no 256 MiB re-hash
        of a version the commit just wrote, decision 41). A copy checks `digest` if one is given."""
        if digest is not None:
            validate_digest(digest)
        source = Path(source)
        try:
            handle = source.open("rb")
        except FileNotFoundError as err:
            raise FedtuneError(ErrorCode.NOT_FOUND, f"cannot store {source}: no such file") from err
        except IsADirectoryError as err:
            raise FedtuneError(
                ErrorCode.INVALID_ARGUMENT, f"cannot store {source}: it is a directory"
            ) from err
        except OSError as err:
            raise _storage_error(f"read {source}", err) from err
        with handle:
            if move and source.is_file() and os.stat(source).st_dev == os.stat(self._tmp_dir).st_dev:
                return self._move_in(source, handle, digest)
            stored = self.put_stream(iter_file_chunks(handle, self.chunk_size))
        if digest is not None and stored != digest:
            raise FedtuneError(
                ErrorCode.STORAGE, f"{source} changed while it was stored: sha256 {stored}, expected {digest}"
            )
        if move:
            source.unlink()
        return stored

    def _move_in(self, source: Path, handle: BinaryIO, digest: str | None = None) -> str:
        """Hash `source` (unless its `digest` is given) and rename it into place (same filesystem):
        no copy of a large file."""
        try:
            if digest is None:
                hasher = hashlib.sha256()
                for chunk in iter_file_chunks(handle, self.chunk_size):
                    hasher.update(chunk)
                digest = hasher.hexdigest()
            os.fsync(handle.fileno())  # the caller may not have; the rename must not outrun the data
            self._install(source, digest)
            _fsync_dir(source.parent)
            return digest
        except OSError as err:
            raise _storage_error(f"move {source} into the store", err) from err

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return exclusive_file_lock(self._lock_path)

    def _install(self, path: Path, digest: str) -> None:
        """Rename the complete, fsynced file `path` to the blob path of `digest`, durably."""
        with self._locked():
            self._install_locked(path, digest)

    def _install_locked(self, path: Path, digest: str) -> None:
        target = self._path(digest)
        if target.exists():
            os.utime(target)  # put again: a collector keeps it for its grace period from now
            path.unlink()  # same content is already stored: puts are idempotent
            return
        shard = target.parent
        if not shard.exists():
            shard.mkdir(exist_ok=True)
            _fsync_dir(self._blobs_dir)
        os.chmod(path, 0o444)  # blobs are immutable
        os.replace(path, target)
        _fsync_dir(shard)

    def delete(self, digest: str) -> None:
        path = self._path(digest)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as err:
            raise _storage_error(f"delete blob {digest}", err) from err
        _fsync_dir(path.parent)

    def delete_if_older(self, digest: str, cutoff: float) -> int | None:
        path = self._path(digest)
        with self._locked():
            try:
                stat = path.stat()
            except FileNotFoundError:
                return 0
            if stat.st_mtime >= cutoff:
                return None
            self.delete(digest)
        return stat.st_size

    def iter_blobs(self) -> Iterator[BlobInfo]:
        for digest in self.iter_digests():
            try:
                stat = self._path(digest).stat()
            except FileNotFoundError:
                continue  # collected meanwhile
            yield BlobInfo(digest, stat.st_size, stat.st_mtime)

    def cleanup_partial(self) -> int:
        removed = 0
        for path in self._tmp_dir.iterdir():
            try:
                fd = os.open(path, os.O_RDONLY)
            except (FileNotFoundError, IsADirectoryError):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a live put is writing it
            try:
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass  # its put finished and renamed it meanwhile
            finally:
                os.close(fd)
        if removed:
            _fsync_dir(self._tmp_dir)
        return removed

    # -- reads ------------------------------------------------------------------------------

    def open(self, digest: str) -> BinaryIO:
        try:
            return self._path(digest).open("rb")
        except FileNotFoundError as err:
            raise FedtuneError(ErrorCode.NOT_FOUND, f"blob {digest} is not in {self!r}") from err

    def local_path(self, digest: str) -> Path:
        path = self._path(digest)
        if not path.is_file():
            raise FedtuneError(ErrorCode.NOT_FOUND, f"blob {digest} is not in {self!r}")
        return path

    def exists(self, digest: str) -> bool:
        return self._path(digest).is_file()

    def iter_digests(self) -> Iterator[str]:
        """Every stored digest (for garbage collection and audits)."""
        for shard in sorted(self._blobs_dir.iterdir()):
            if not shard.is_dir():
                continue
            for path in sorted(shard.iterdir()):
                digest = shard.name + path.name
                if _DIGEST_RE.fullmatch(digest):
                    yield digest

    def copy_to(self, digest: str, destination: Path) -> None:
        """Copy the blob to `destination` (e.g. exporting a model version)."""
        shutil.copyfile(self.local_path(digest), destination)
