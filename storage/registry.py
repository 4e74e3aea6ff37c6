"""Registry operations the coordinator builds on.

The one invariant: **a row that names a blob is committed only after the blob is durable.**
``store_model_version`` puts the tensors and side files into the blob store first (each put
returns only once fsynced and renamed into place), and only then inserts and commits the
``model_versions`` row, in one unit of work with whatever the caller's ``extra`` hook changes.
A crash before the commit leaves at most an unreferenced blob (harmless, collectable), never
a row naming a missing blob.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError

from fedtune.errors import ErrorCode, FedtuneError
from fedtune.sanitize import ERROR_TEXT_LIMIT, EVENT_MESSAGE_LIMIT, public_data, public_text
from storage.blobs import BlobStore
from storage.models import Event, ModelVersion, new_id
from storage.states import VersionKind
from storage.uow import UnitOfWork

MODEL_KINDS = tuple(kind.value for kind in VersionKind)
U = TypeVar("U", bound=UnitOfWork)


def _check_side_file_name(name: str) -> None:
    # Side files are written out by name on export (adapter_config.json, tokenizer.json ...).
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"side file name {name!r} must be a plain file name without path separators, "
            "e.g. 'adapter_config.json'",
        )


def store_model_version(
    uow_factory: Callable[[], U],
    blobs: BlobStore,
    *,
    tensors_path: Path,
    files: Mapping[str, bytes],
    experiment_id: str,
    version: int,
    parent_id: str | None,
    stage_index: int,
    stage_name: str,
    round: int,
    kind: str,
    manifest: dict[str, Any],
    metrics: dict[str, Any],
    sites: list[str],
    num_examples: int,
    site_id: int | None = None,
    extra: Callable[[U, ModelVersion], None] | None = None,
    move: bool = False,
    tensors_digest: str | None = None,
) -> ModelVersion:
    """Store a model version: blobs first (durable), then its row, committed in one unit of work.

    `tensors_path` is the safetensors file (consumed when `move=True`; `tensors_digest`, its sha256
    as written, spares the blob store reading it again); `files` maps side file
    names to their bytes. `extra(uow, row)` runs inside the same transaction before the commit
    (e.g. to mark the round committed). Raises FedtuneError: INVALID_ARGUMENT for a bad kind or
    file name, NOT_FOUND for a missing tensors file, experiment or parent, ALREADY_EXISTS when
    the experiment already has this version. On any error no row is committed.
    """
    if kind not in MODEL_KINDS:
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"model kind {kind!r} is not one of {MODEL_KINDS}")
    if version < 0:
        raise FedtuneError(ErrorCode.INVALID_ARGUMENT, f"model version must be >= 0, got {version}")
    for name in files:
        _check_side_file_name(name)

    # 1. Blobs, durable before any row names them.
    blob_digest = blobs.put_file(Path(tensors_path), move=move, digest=tensors_digest)
    file_digests = {name: blobs.put_bytes(data) for name, data in sorted(files.items())}

    # 2. The row (and the caller's changes), in one transaction.
    uow = uow_factory()
    with uow:
        if uow.experiments.get(experiment_id) is None:
            raise FedtuneError(ErrorCode.NOT_FOUND, f"experiment {experiment_id!r} does not exist")
        if parent_id is not None and uow.versions.get(parent_id) is None:
            raise FedtuneError(ErrorCode.NOT_FOUND, f"parent model version {parent_id!r} does not exist")
        taken = uow.versions.numbered(experiment_id, version)
        if taken is not None:
            raise FedtuneError(
                ErrorCode.ALREADY_EXISTS,
                f"experiment {experiment_id!r} already has model version {version} ({taken.id})",
            )
        row = ModelVersion(
            id=new_id("mv"),
            experiment_id=experiment_id,
            version=version,
            parent_id=parent_id,
            stage_index=stage_index,
            stage_name=stage_name,
            round=round,
            kind=kind,
            site_id=site_id,
            blob_digest=blob_digest,
            manifest=dict(manifest),
            files=file_digests,
            metrics=dict(metrics),
            sites=list(sites),
            num_examples=num_examples,
        )
        uow.versions.add(row)
        try:
            uow.flush()
            if extra is not None:
                extra(uow, row)
            uow.commit()
        except IntegrityError as err:
            raise FedtuneError(
                ErrorCode.ALREADY_EXISTS,
                f"model version {version} of experiment {experiment_id!r} conflicts with a stored row: "
                f"{err.orig}",
            ) from err
    return row


def record_event(
    uow: UnitOfWork,
    kind: str,
    message: str,
    experiment_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> Event:
    """Add an audit event to the open unit of work (committed with it; its id is set on flush).

    Messages and data often carry what a site sent (a task's error, an upload's rejection): every
    string is made one printable line and bounded here, once for all callers (fedtune/sanitize.py).
    An event means something changed: the commit wakes the scheduler and the event watchers.
    """
    event = Event(
        kind=kind,
        message=public_text(message, EVENT_MESSAGE_LIMIT),
        experiment_id=experiment_id,
        data=public_data(dict(data or {}), ERROR_TEXT_LIMIT),
    )
    uow.events.add(event)
    uow.wake()
    return event


def events_after(
    uow: UnitOfWork, after_id: int = 0, *, experiment_id: str | None = None, limit: int = 100
) -> list[Event]:
    """Events with id > `after_id`, oldest first (what `fedtune admin watch` polls)."""
    return uow.events.after(after_id, experiment_id=experiment_id, limit=limit)


def get_model_version(uow: UnitOfWork, version_id: str) -> ModelVersion:
    row = uow.versions.get(version_id)
    if row is None:
        raise FedtuneError(ErrorCode.NOT_FOUND, f"model version {version_id!r} does not exist")
    return row


def list_model_versions(uow: UnitOfWork, experiment_id: str) -> list[ModelVersion]:
    """The experiment's model versions, by version number."""
    return uow.versions.ordered(experiment_id)


def latest_model_version(
    uow: UnitOfWork, experiment_id: str, *, stage_index: int | None = None
) -> ModelVersion | None:
    """The experiment's highest-numbered version (optionally of one stage), or None."""
    return uow.versions.latest(experiment_id, stage_index=stage_index)


def model_version_lineage(uow: UnitOfWork, version_id: str) -> list[ModelVersion]:
    """The chain of versions from the root ancestor down to `version_id` (root first)."""
    chain: list[ModelVersion] = []
    seen: set[str] = set()
    current: str | None = version_id
    while current is not None:
        if current in seen:
            raise FedtuneError(ErrorCode.STORAGE, f"model version lineage loops at {current!r}")
        seen.add(current)
        row = get_model_version(uow, current)
        chain.append(row)
        current = row.parent_id
    chain.reverse()
    return chain


def referenced_blob_digests(uow: UnitOfWork) -> set[str]:
    """Every digest a row names and needs (model versions not pruned, their side files, strategy
    states, update side files): what a blob garbage collector must keep (coordinator/retention.py)."""
    return uow.versions.referenced_blob_digests()
