"""Streaming stored model versions out: FetchTensors (workers) and ExportModel (operators)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.encoder import iter_chunks_from_file
from fedtune.tensorstream.manifest import Chunk, Manifest
from storage.blobs import BlobStore
from storage.registry import get_model_version
from storage.uow import UnitOfWorkFactory


@dataclass(frozen=True)
class SideFile:
    name: str
    content: bytes


class DownloadService:
    def __init__(
        self, uow_factory: UnitOfWorkFactory, blobs: BlobStore, default_chunk_bytes: int, max_chunk_bytes: int
    ) -> None:
        self._uow_factory = uow_factory
        self._blobs = blobs
        self._default_chunk_bytes = default_chunk_bytes
        self._max_chunk_bytes = max_chunk_bytes

    def _version(self, version_id: str) -> tuple[Manifest, str, dict[str, str]]:
        with self._uow_factory() as uow:
            row = get_model_version(uow, version_id)
            return (
                Manifest.from_json(row.manifest),
                row.blob_digest,
                {k: str(v) for k, v in row.files.items()},
            )

    def fetch(
        self, version_id: str, start_tensor: int = 0, start_offset: int = 0, chunk_bytes: int = 0
    ) -> Iterator[Manifest | Chunk]:
        """The version's manifest, then its chunks from (start_tensor, start_offset)."""
        manifest, digest, _ = self._version(version_id)
        size = chunk_bytes or self._default_chunk_bytes
        if size < 0:
            raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"chunk_size must be >= 0, got {chunk_bytes}")
        size = min(size, self._max_chunk_bytes)
        path = self._blobs.local_path(digest)
        chunks = iter_chunks_from_file(path, size, start_tensor, start_offset)
        first = next(chunks, None)  # validates the start position before anything is sent
        yield manifest
        if first is not None:
            yield first
            yield from chunks

    def export(self, version_id: str) -> Iterator[Manifest | Chunk | SideFile]:
        """Manifest, chunks, then one item per side file (e.g. adapter_config.json)."""
        _, _, files = self._version(version_id)
        yield from self.fetch(version_id)
        for name, digest in sorted(files.items()):
            with self._blobs.open(digest) as handle:
                yield SideFile(name, handle.read())
