"""Admitting a PushUpdate: its header against the door limits, its task, its round and the base layout.

Every refusal happens here, before anything about the round changes (and before a spool file exists).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.secagg.payload import masked_manifest
from coordinator.tasks import get_own_task
from fedtune import limits
from fedtune.compression.encoding import UpdateEncoding, check_encoded_manifest
from fedtune.errors import ErrorCode, FedtuneError
from fedtune.serde import UpdateHeaderRecord
from fedtune.tensorstream.manifest import Manifest
from storage import models
from storage.registry import latest_model_version
from storage.states import RoundState, TaskState
from storage.uow import UnitOfWork


@dataclass(frozen=True)
class Admission:
    task_id: str
    kind: str  # init or train
    experiment_id: str
    round_id: str | None
    site: str
    spool_path: Path
    stage_index: int = 0
    # A compressed update (decision 40) is decoded against the task's model version once verified.
    encoding: UpdateEncoding = field(default_factory=UpdateEncoding)
    model_manifest: Manifest | None = None  # the task's model version's layout (TRAIN)
    base_blob_digest: str | None = None  # the blob of the task's model version (TRAIN)
    masked: bool = False  # a secure-aggregation round's update: one int32 vector of Z_2^32 elements


def check_update_header(header: UpdateHeaderRecord, max_examples: int) -> None:
    """INVALID_ARGUMENT unless every field of the header fits the door limits (fedtune.limits)."""
    limits.check_id("task_id", header.task_id)
    limits.check_num_examples("num_examples", header.num_examples, max_examples)
    limits.check_metrics("metrics", header.metrics)
    limits.check_tensor_names("manifest", header.manifest.names)
    limits.check_side_files("files", header.files)


def first_layout_difference(expected: Manifest, got: Manifest) -> str | None:
    """A sentence naming the first tensor where `got` differs from `expected`, or None if the same."""
    for index, (want, have) in enumerate(zip(expected.tensors, got.tensors, strict=False)):
        if want.name != have.name:
            return f"tensor {index} is {have.name!r}, expected {want.name!r}"
        if want.dtype != have.dtype:
            return f"tensor {want.name!r} has dtype {have.dtype}, expected {want.dtype}"
        if want.shape != have.shape:
            return f"tensor {want.name!r} has shape {list(have.shape)}, expected {list(want.shape)}"
    if len(got.tensors) != len(expected.tensors):
        return f"the update has {len(got.tensors)} tensors, the model version has {len(expected.tensors)}"
    return None


def admit(
    uow: UnitOfWork,
    site_id: int,
    header: UpdateHeaderRecord,
    spool_path: Callable[[models.Task], Path],
    max_update_bytes: int,
) -> Admission:
    """The admitted stream's task and spool path; a FedtuneError (changing nothing) otherwise."""
    task = get_own_task(uow, site_id, header.task_id)
    site = uow.sites.get(site_id)
    assert site is not None
    if task.kind not in ("init", "train"):
        raise FedtuneError(ErrorCode.WRONG_STATE, f"a {task.kind} task has no update; use ReportResult")
    previous = uow.updates.for_task(task.id)
    if previous is not None:
        raise FedtuneError(
            ErrorCode.TASK_CLOSED, f"task {task.id} already has a {previous.state} update (replay)"
        )
    if task.state != TaskState.LEASED:
        raise FedtuneError(
            ErrorCode.TASK_CLOSED, f"task {task.id} is {task.state}, not leased; pull it first"
        )
    base: models.ModelVersion | None = None
    masked = False
    if task.kind == "train":
        base, masked = _check_train(uow, task, header)
    elif not header.encoding.is_plain:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"encoding: an INIT update defines the stage's layout and is sent plain fp32, not "
            f"{header.encoding.describe()}; leave the header's encoding unset",
        )
    elif latest_model_version(uow, task.experiment_id, stage_index=task.stage_index) is not None:
        raise FedtuneError(
            ErrorCode.TASK_CLOSED,
            f"experiment {task.experiment_id} already has the initial version of stage {task.stage_index}",
        )
    if header.manifest.total_bytes > max_update_bytes:
        raise FedtuneError(
            ErrorCode.TOO_LARGE,
            f"update of {header.manifest.total_bytes} bytes exceeds max_update_bytes ({max_update_bytes})",
        )
    return Admission(
        task.id,
        task.kind,
        task.experiment_id,
        task.round_id,
        site.name,
        spool_path(task),
        task.stage_index,
        masked=masked,
        encoding=header.encoding,
        model_manifest=Manifest.from_json(base.manifest) if base is not None else None,
        base_blob_digest=base.blob_digest if base is not None else None,
    )


def _check_train(
    uow: UnitOfWork, task: models.Task, header: UpdateHeaderRecord
) -> tuple[models.ModelVersion, bool]:
    """The task's model version, once the header fits the round and that version's layout, and whether
    the update must arrive masked (a secure-aggregation round)."""
    rnd = uow.rounds.get(task.round_id) if task.round_id else None
    if rnd is None or rnd.state != RoundState.COLLECTING:
        raise FedtuneError(
            ErrorCode.TASK_CLOSED, f"round of task {task.id} is {rnd.state if rnd else 'gone'}; too late"
        )
    if header.num_examples <= 0:
        raise FedtuneError(
            ErrorCode.INVALID_ARGUMENT,
            f"num_examples must be > 0 for a train update, got {header.num_examples}",
        )
    base = uow.versions.get(task.model_version_id) if task.model_version_id else None
    assert base is not None
    expected = Manifest.from_json(base.manifest)
    masked = uow.secagg.round(rnd.id) is not None
    if not header.encoding.is_plain:
        if masked:
            raise FedtuneError(
                ErrorCode.BAD_MANIFEST,
                "a secure-aggregation round takes the masked update only, not a compressed one; "
                "leave the header's encoding unset",
            )
        check_encoded_manifest(expected, header.encoding, header.manifest)
        return base, False
    if masked:
        expected = masked_manifest(expected)
    difference = first_layout_difference(expected, header.manifest)
    if difference is not None:
        what = "the masked layout (secure aggregation) of" if masked else ""
        raise FedtuneError(
            ErrorCode.BAD_MANIFEST,
            f"the update does not match {what} model version {base.version}: {difference}".replace("  ", " "),
        )
    return base, masked
