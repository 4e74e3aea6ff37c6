"""The one seam between wire and domain: paired ``*_to_proto`` / ``*_from_proto`` functions.

Domain records here are plain frozen dataclasses that both sides understand (the coordinator
builds them from registry rows, the admin CLI gets them back from protos). Tensor manifests and
chunks convert in ``fedtune.tensorstream.serde``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fedtune.compression.encoding import UpdateEncoding
from fedtune.secagg.wire import SecAggTaskRecord, secagg_task_from_proto, secagg_task_to_proto
from fedtune.tensorstream.manifest import Manifest
from fedtune.tensorstream.serde import manifest_from_proto, manifest_to_proto
from fedtune.v1 import admin_pb2, worker_pb2


@dataclass(frozen=True)
class PrivacySpentRecord:
    """Differential privacy spent by an experiment with privacy.dp (coordinator/privacy_budget.py)."""

    level: str
    epsilon: float
    delta: float
    target_epsilon: float  # 0 = no budget
    accountant: str
    rounds: int  # committed rounds in the ledger
    budget_spent: str = ""  # why the experiment stopped on its budget ("" = it did not)
    site_epsilons: dict[str, float] = field(default_factory=dict)  # record level, per site


def privacy_to_proto(rec: PrivacySpentRecord) -> admin_pb2.PrivacySpent:
    return admin_pb2.PrivacySpent(
        level=rec.level,
        epsilon=rec.epsilon,
        delta=rec.delta,
        target_epsilon=rec.target_epsilon,
        accountant=rec.accountant,
        rounds=rec.rounds,
        budget_spent=rec.budget_spent,
        site_epsilons=rec.site_epsilons,
    )


def privacy_from_proto(msg: admin_pb2.PrivacySpent) -> PrivacySpentRecord:
    return PrivacySpentRecord(
        level=msg.level,
        epsilon=msg.epsilon,
        delta=msg.delta,
        target_epsilon=msg.target_epsilon,
        accountant=msg.accountant,
        rounds=msg.rounds,
        budget_spent=msg.budget_spent,
        site_epsilons=dict(msg.site_epsilons),
    )


@dataclass(frozen=True)
class ExperimentRecord:
    experiment_id: str
    name: str
    state: str
    spec_yaml: str
    current_stage: str
    current_stage_index: int
    current_round: int
    created_unix: float
    updated_unix: float
    error: str = ""
    latest_model_version_id: str = ""
    waiting_reason: str = ""  # why a running experiment cannot start its next round / task
    privacy: PrivacySpentRecord | None = None  # set when the spec has privacy.dp


def experiment_to_proto(rec: ExperimentRecord) -> admin_pb2.Experiment:
    return admin_pb2.Experiment(
        experiment_id=rec.experiment_id,
        name=rec.name,
        state=rec.state,
        spec_yaml=rec.spec_yaml,
        current_stage=rec.current_stage,
        current_stage_index=rec.current_stage_index,
        current_round=rec.current_round,
        created_unix=rec.created_unix,
        updated_unix=rec.updated_unix,
        error=rec.error,
        latest_model_version_id=rec.latest_model_version_id,
        waiting_reason=rec.waiting_reason,
        privacy=privacy_to_proto(rec.privacy) if rec.privacy is not None else None,
    )


def experiment_from_proto(msg: admin_pb2.Experiment) -> ExperimentRecord:
    return ExperimentRecord(
        experiment_id=msg.experiment_id,
        name=msg.name,
        state=msg.state,
        spec_yaml=msg.spec_yaml,
        current_stage=msg.current_stage,
        current_stage_index=msg.current_stage_index,
        current_round=msg.current_round,
        created_unix=msg.created_unix,
        updated_unix=msg.updated_unix,
        error=msg.error,
        latest_model_version_id=msg.latest_model_version_id,
        waiting_reason=msg.waiting_reason,
        privacy=privacy_from_proto(msg.privacy) if msg.HasField("privacy") else None,
    )


@dataclass(frozen=True)
class SiteUpdateRecord:
    """One site's accepted update in a round: its reported metrics and size, never its tensors."""

    site: str
    num_examples: int
    weight: float
    metrics: dict[str, float]
    received_bytes: int
    state: str  # verified, folded


def site_update_to_proto(rec: SiteUpdateRecord) -> admin_pb2.SiteUpdate:
    return admin_pb2.SiteUpdate(
        site=rec.site,
        num_examples=rec.num_examples,
        weight=rec.weight,
        metrics=rec.metrics,
        received_bytes=rec.received_bytes,
        state=rec.state,
    )


def site_update_from_proto(msg: admin_pb2.SiteUpdate) -> SiteUpdateRecord:
    return SiteUpdateRecord(
        site=msg.site,
        num_examples=msg.num_examples,
        weight=msg.weight,
        metrics=dict(msg.metrics),
        received_bytes=msg.received_bytes,
        state=msg.state,
    )


@dataclass(frozen=True)
class RoundRecord:
    round_id: str
    experiment_id: str
    stage: str
    stage_index: int
    round: int
    state: str
    tasks_total: int
    updates_received: int
    opened_unix: float
    deadline_unix: float
    closed_unix: float = 0.0
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    model_version_id: str = ""
    site_updates: tuple[SiteUpdateRecord, ...] = ()
    waiting_for: tuple[str, ...] = ()  # an open round: sites whose tasks it still waits for
    waiting_reason: str = ""


def round_to_proto(rec: RoundRecord) -> admin_pb2.RoundInfo:
    return admin_pb2.RoundInfo(
        round_id=rec.round_id,
        experiment_id=rec.experiment_id,
        stage=rec.stage,
        stage_index=rec.stage_index,
        round=rec.round,
        state=rec.state,
        tasks_total=rec.tasks_total,
        updates_received=rec.updates_received,
        opened_unix=rec.opened_unix,
        deadline_unix=rec.deadline_unix,
        closed_unix=rec.closed_unix,
        reason=rec.reason,
        metrics=rec.metrics,
        model_version_id=rec.model_version_id,
        site_updates=[site_update_to_proto(u) for u in rec.site_updates],
        waiting_for=list(rec.waiting_for),
        waiting_reason=rec.waiting_reason,
    )


def round_from_proto(msg: admin_pb2.RoundInfo) -> RoundRecord:
    return RoundRecord(
        round_id=msg.round_id,
        experiment_id=msg.experiment_id,
        stage=msg.stage,
        stage_index=msg.stage_index,
        round=msg.round,
        state=msg.state,
        tasks_total=msg.tasks_total,
        updates_received=msg.updates_received,
        opened_unix=msg.opened_unix,
        deadline_unix=msg.deadline_unix,
        closed_unix=msg.closed_unix,
        reason=msg.reason,
        metrics=dict(msg.metrics),
        model_version_id=msg.model_version_id,
        site_updates=tuple(site_update_from_proto(u) for u in msg.site_updates),
        waiting_for=tuple(msg.waiting_for),
        waiting_reason=msg.waiting_reason,
    )


@dataclass(frozen=True)
class WorkerRecord:
    site: str
    worker_id: str
    state: str  # online, busy, offline
    last_seen_unix: float
    device: str = ""
    current_task_id: str = ""
    dataset_sizes: dict[str, int] = field(default_factory=dict)


def worker_to_proto(rec: WorkerRecord) -> admin_pb2.WorkerInfo:
    return admin_pb2.WorkerInfo(
        site=rec.site,
        worker_id=rec.worker_id,
        state=rec.state,
        last_seen_unix=rec.last_seen_unix,
        device=rec.device,
        current_task_id=rec.current_task_id,
        dataset_sizes=rec.dataset_sizes,
    )


def worker_from_proto(msg: admin_pb2.WorkerInfo) -> WorkerRecord:
    return WorkerRecord(
        site=msg.site,
        worker_id=msg.worker_id,
        state=msg.state,
        last_seen_unix=msg.last_seen_unix,
        device=msg.device,
        current_task_id=msg.current_task_id,
        dataset_sizes=dict(msg.dataset_sizes),
    )


@dataclass(frozen=True)
class SiteRecord:
    name: str
    created_unix: float
    revoked_unix: float = 0.0  # 0 = active
    workers_online: int = 0
    last_seen_unix: float = 0.0


def site_to_proto(rec: SiteRecord) -> admin_pb2.SiteInfo:
    return admin_pb2.SiteInfo(
        name=rec.name,
        created_unix=rec.created_unix,
        revoked_unix=rec.revoked_unix,
        workers_online=rec.workers_online,
        last_seen_unix=rec.last_seen_unix,
    )


def site_from_proto(msg: admin_pb2.SiteInfo) -> SiteRecord:
    return SiteRecord(
        name=msg.name,
        created_unix=msg.created_unix,
        revoked_unix=msg.revoked_unix,
        workers_online=msg.workers_online,
        last_seen_unix=msg.last_seen_unix,
    )


@dataclass(frozen=True)
class ModelVersionRecord:
    version_id: str
    experiment_id: str
    version: int
    parent_id: str
    stage: str
    round: int
    kind: str
    blob_digest: str
    manifest: Manifest
    metrics: dict[str, float] = field(default_factory=dict)
    sites: tuple[str, ...] = ()
    num_examples: int = 0
    created_unix: float = 0.0
    files: tuple[str, ...] = ()
    pinned: str = ""  # why it is pinned ("" = not pinned)
    pruned_unix: float = 0.0  # 0 = its tensors are kept


def model_version_to_proto(rec: ModelVersionRecord) -> admin_pb2.ModelVersion:
    return admin_pb2.ModelVersion(
        version_id=rec.version_id,
        experiment_id=rec.experiment_id,
        version=rec.version,
        parent_id=rec.parent_id,
        stage=rec.stage,
        round=rec.round,
        kind=rec.kind,
        blob_digest=rec.blob_digest,
        manifest=manifest_to_proto(rec.manifest),
        metrics=rec.metrics,
        sites=list(rec.sites),
        num_examples=rec.num_examples,
        created_unix=rec.created_unix,
        files=list(rec.files),
        pinned=rec.pinned,
        pruned_unix=rec.pruned_unix,
    )


def model_version_from_proto(msg: admin_pb2.ModelVersion) -> ModelVersionRecord:
    return ModelVersionRecord(
        version_id=msg.version_id,
        experiment_id=msg.experiment_id,
        version=msg.version,
        parent_id=msg.parent_id,
        stage=msg.stage,
        round=msg.round,
        kind=msg.kind,
        blob_digest=msg.blob_digest,
        manifest=manifest_from_proto(msg.manifest),
        metrics=dict(msg.metrics),
        sites=tuple(msg.sites),
        num_examples=msg.num_examples,
        created_unix=msg.created_unix,
        files=tuple(msg.files),
        pinned=msg.pinned,
        pruned_unix=msg.pruned_unix,
    )


@dataclass(frozen=True)
class EventRecord:
    event_id: int
    created_unix: float
    experiment_id: str
    kind: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


def event_to_proto(rec: EventRecord) -> admin_pb2.Event:
    return admin_pb2.Event(
        event_id=rec.event_id,
        created_unix=rec.created_unix,
        experiment_id=rec.experiment_id,
        kind=rec.kind,
        message=rec.message,
        data_json=json.dumps(rec.data, sort_keys=True, default=str),
    )


def event_from_proto(msg: admin_pb2.Event) -> EventRecord:
    return EventRecord(
        event_id=msg.event_id,
        created_unix=msg.created_unix,
        experiment_id=msg.experiment_id,
        kind=msg.kind,
        message=msg.message,
        data=json.loads(msg.data_json) if msg.data_json else {},
    )


TASK_KINDS: dict[str, int] = {
    "init": worker_pb2.TASK_KIND_INIT,
    "train": worker_pb2.TASK_KIND_TRAIN,
    "personalize": worker_pb2.TASK_KIND_PERSONALIZE,
    "evaluate": worker_pb2.TASK_KIND_EVALUATE,
    "secagg_advertise": worker_pb2.TASK_KIND_SECAGG_ADVERTISE,
    "secagg_share": worker_pb2.TASK_KIND_SECAGG_SHARE,
    "secagg_unmask": worker_pb2.TASK_KIND_SECAGG_UNMASK,
}
_TASK_KIND_NAMES = {v: k for k, v in TASK_KINDS.items()}


@dataclass(frozen=True)
class TaskRecord:
    task_id: str
    kind: str  # init, train, personalize, evaluate
    experiment_id: str
    stage: str
    stage_index: int
    round: int
    spec_json: str
    model_version_id: str = ""
    model_manifest: Manifest | None = None
    deadline_unix: float = 0.0
    update_kind: str = "weights"  # deprecated (worker.proto): workers send weights, refuse anything else
    base_version_id: str = ""
    secagg: SecAggTaskRecord | None = None  # secure aggregation: secagg_* tasks and a secagg round's train


def task_to_proto(rec: TaskRecord) -> worker_pb2.Task:
    msg = worker_pb2.Task(
        task_id=rec.task_id,
        kind=TASK_KINDS[rec.kind],  # type: ignore[arg-type]
        experiment_id=rec.experiment_id,
        stage=rec.stage,
        stage_index=rec.stage_index,
        round=rec.round,
        spec_json=rec.spec_json,
        model_version_id=rec.model_version_id,
        deadline_unix=rec.deadline_unix,
        update_kind=rec.update_kind,
        base_version_id=rec.base_version_id,
    )
    if rec.model_manifest is not None:
        msg.model_manifest.CopyFrom(manifest_to_proto(rec.model_manifest))
    if rec.secagg is not None:
        msg.secagg.CopyFrom(secagg_task_to_proto(rec.secagg))
    return msg


def task_from_proto(msg: worker_pb2.Task) -> TaskRecord:
    return TaskRecord(
        task_id=msg.task_id,
        kind=_TASK_KIND_NAMES.get(msg.kind, "unspecified"),
        experiment_id=msg.experiment_id,
        stage=msg.stage,
        stage_index=msg.stage_index,
        round=msg.round,
        spec_json=msg.spec_json,
        model_version_id=msg.model_version_id,
        model_manifest=manifest_from_proto(msg.model_manifest) if msg.HasField("model_manifest") else None,
        deadline_unix=msg.deadline_unix,
        update_kind=msg.update_kind,
        base_version_id=msg.base_version_id,
        secagg=secagg_task_from_proto(msg.secagg) if msg.HasField("secagg") else None,
    )


@dataclass(frozen=True)
class UpdateHeaderRecord:
    task_id: str
    num_examples: int
    manifest: Manifest
    metrics: dict[str, float] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    resume: bool = False
    encoding: UpdateEncoding = field(default_factory=UpdateEncoding)  # plain fp32 unless compressed


def update_header_to_proto(rec: UpdateHeaderRecord) -> worker_pb2.UpdateHeader:
    """The header; a plain fp32 update leaves `encoding` unset (the bytes of a header before it)."""
    header = worker_pb2.UpdateHeader(
        task_id=rec.task_id,
        num_examples=rec.num_examples,
        metrics=rec.metrics,
        manifest=manifest_to_proto(rec.manifest),
        files=rec.files,
        resume=rec.resume,
    )
    if not rec.encoding.is_plain:
        header.encoding.CopyFrom(
            worker_pb2.UpdateEncoding(
                values=rec.encoding.values,
                int8_block_size=rec.encoding.int8_block_size,
                topk=rec.encoding.topk,
            )
        )
    return header


def update_header_from_proto(msg: worker_pb2.UpdateHeader) -> UpdateHeaderRecord:
    """The header; BAD_MANIFEST when its manifest is malformed, INVALID_ARGUMENT for an unknown encoding."""
    return UpdateHeaderRecord(
        task_id=msg.task_id,
        num_examples=msg.num_examples,
        manifest=manifest_from_proto(msg.manifest),
        metrics=dict(msg.metrics),
        files=dict(msg.files),
        resume=msg.resume,
        encoding=UpdateEncoding.checked(
            msg.encoding.values, int(msg.encoding.int8_block_size), msg.encoding.topk
        ),
    )


@dataclass(frozen=True)
class ExperimentStorageRecord:
    experiment_id: str
    name: str
    versions: int
    versions_pruned: int
    version_bytes: int
    spool_bytes: int


@dataclass(frozen=True)
class StorageUsageRecord:
    blob_bytes: int
    blob_count: int
    unreferenced_bytes: int
    unreferenced_blobs: int
    spool_bytes: int
    stale_spool_bytes: int
    work_bytes: int
    retention_keep_last: int
    versions_to_prune: int
    experiments: tuple[ExperimentStorageRecord, ...] = ()


def storage_usage_to_proto(rec: StorageUsageRecord) -> admin_pb2.StorageUsage:
    fields = {k: v for k, v in rec.__dict__.items() if k != "experiments"}
    return admin_pb2.StorageUsage(
        **fields, experiments=[admin_pb2.ExperimentStorage(**e.__dict__) for e in rec.experiments]
    )


def storage_usage_from_proto(msg: admin_pb2.StorageUsage) -> StorageUsageRecord:
    experiment_fields = ExperimentStorageRecord.__dataclass_fields__
    return StorageUsageRecord(
        blob_bytes=msg.blob_bytes,
        blob_count=msg.blob_count,
        unreferenced_bytes=msg.unreferenced_bytes,
        unreferenced_blobs=msg.unreferenced_blobs,
        spool_bytes=msg.spool_bytes,
        stale_spool_bytes=msg.stale_spool_bytes,
        work_bytes=msg.work_bytes,
        retention_keep_last=msg.retention_keep_last,
        versions_to_prune=msg.versions_to_prune,
        experiments=tuple(
            ExperimentStorageRecord(**{name: getattr(e, name) for name in experiment_fields})
            for e in msg.experiments
        ),
    )


@dataclass(frozen=True)
class GcReportRecord:
    dry_run: bool
    versions_pruned: int = 0
    pruned_version_ids: tuple[str, ...] = ()
    strategy_states_deleted: int = 0
    blobs_deleted: int = 0
    blob_bytes_freed: int = 0
    blobs_kept_young: int = 0
    spool_entries_deleted: int = 0
    spool_bytes_freed: int = 0
    seconds: float = 0.0


def gc_report_to_proto(rec: GcReportRecord) -> admin_pb2.CollectGarbageReport:
    fields = dict(rec.__dict__, pruned_version_ids=list(rec.pruned_version_ids))
    return admin_pb2.CollectGarbageReport(**fields)


def gc_report_from_proto(msg: admin_pb2.CollectGarbageReport) -> GcReportRecord:
    values = {name: getattr(msg, name) for name in GcReportRecord.__dataclass_fields__}
    values["pruned_version_ids"] = tuple(msg.pruned_version_ids)
    return GcReportRecord(**values)
