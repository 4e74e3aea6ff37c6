"""Streaming stored model versions out: FetchTensors (workers) and ExportModel (operators).

A site may fetch only versions of experiments in which it has (or had) a task, and of personalized
versions only its own. Any other version id answers NOT_FOUND with the same message as an id that
does not exist, so a site cannot confirm which ids exist (decision 27). A version pruned by the
retention policy answers NOT_FOUND; an export pins the version it streams (decision 33).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from coordinator.retention import pin_version
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.tensorstream.encoder import iter_chunks_from_arrays, iter_chunks_from_file, manifest_for_arrays
from fedtune.tensorstream.manifest import Chunk, Manifest
from fedtune.tensorstream.safetensors_file import read_arrays, read_header
from storage import models
from storage.blobs import BlobStore
from storage.registry import get_model_version
from storage.uow import UnitOfWork, UowFactory

# Side file of an FFA-LoRA version (worker.tasks.FROZEN_ADAPTER_FILE): the frozen lora_A tensors,
# never exchanged in rounds, merged into the exported tensors so the export is a complete adapter.
FROZEN_ADAPTER_FILE = "frozen_adapter.safetensors"


def _site_may_fetch(uow: UnitOfWork, version: models.ModelVersion, site_id: int) -> bool:
    """A task of the site in the version's experiment; for a version of one site, that site's own."""
    if version.site_id is not None and version.site_id != site_id:
        return False
    return uow.tasks.site_has_task_in(version.experiment_id, site_id)


@dataclass(frozen=True)
class SideFile:
    name: str
    content: bytes


class DownloadService:
    def __init__(
        self, uow_factory: UowFactory, blobs: BlobStore, default_chunk_bytes: int, max_chunk_bytes: int
    ) -> None:
        self._uow_factory = uow_factory
        self._blobs = blobs
        self._default_chunk_bytes = default_chunk_bytes
        self._max_chunk_bytes = max_chunk_bytes

    def _version(
        self, version_id: str, site_id: int | None = None, pin_as: str | None = None
    ) -> tuple[Manifest, str, dict[str, str]]:
        with self._uow_factory() as uow:
            row = get_model_version(uow, version_id)
            if site_id is not None and not _site_may_fetch(uow, row, site_id):
                raise FedtuneError(ErrorCode.NOT_FOUND, f"model version {version_id!r} does not exist")
            if row.pruned_at is not None:
                raise FedtuneError(
                    ErrorCode.NOT_FOUND,
                    f"model version {version_id!r} was pruned by the retention policy: its tensors are "
                    "gone (pin versions to keep them: `fedtune admin models pin`)",
                )
            if pin_as is not None and pin_version(uow, row, pin_as, time.time()):
                uow.commit()
            return (
                Manifest.from_json(row.manifest),
                row.blob_digest,
                {k: str(v) for k, v in row.files.items()},
            )

    def fetch(
        self,
        version_id: str,
        start_tensor: int = 0,
        start_offset: int = 0,
        chunk_bytes: int = 0,
        *,
        site_id: int | None,
    ) -> Iterator[Manifest | Chunk]:
        """The version's manifest, then its chunks from (start_tensor, start_offset). `site_id`: the
        fetching site (NOT_FOUND unless it may see the version); None only for an operator's export."""
        manifest, digest, _ = self._version(version_id, site_id)
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
        """Manifest, chunks, then one item per side file (e.g. adapter_config.json).

        A version with frozen adapter tensors (FFA-LoRA) exports the union of its own and the frozen
        tensors, sorted by name, as one stream (with that union's digest); the frozen file itself
        is not sent. Adapters are small, so the union is built in memory.
        """
        _, digest, files = self._version(version_id, pin_as="exported")  # kept by retention from now
        frozen_digest = files.pop(FROZEN_ADAPTER_FILE, None)
        if frozen_digest is None:
            yield from self.fetch(version_id, site_id=None)
        else:
            arrays, dtypes = self._merged_arrays(digest, frozen_digest, version_id)
            manifest = manifest_for_arrays(arrays, dtypes)
            yield manifest
            yield from iter_chunks_from_arrays(arrays, manifest, self._default_chunk_bytes)
        for name, side_digest in sorted(files.items()):
            with self._blobs.open(side_digest) as handle:
                yield SideFile(name, handle.read())

    def _merged_arrays(
        self, digest: str, frozen_digest: str, version_id: str
    ) -> tuple[dict[str, Any], dict[str, str]]:
        merged: dict[str, Any] = {}
        dtypes: dict[str, str] = {}
        for blob in (digest, frozen_digest):
            path = self._blobs.local_path(blob)
            manifest, _ = read_header(path)
            for spec, (name, array) in zip(manifest.tensors, read_arrays(path).items(), strict=True):
                if name in merged:
                    raise FedtuneError(
                        ErrorCode.STORAGE,
                        f"version {version_id}: tensor {name!r} is both trained and in {FROZEN_ADAPTER_FILE}",
                    )
                merged[name], dtypes[name] = array, spec.dtype
        names = sorted(merged)
        return {name: merged[name] for name in names}, {name: dtypes[name] for name in names}
