from fedtune.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitExperimentRequest(_message.Message):
    __slots__ = ("spec_yaml", "start")
    SPEC_YAML_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    spec_yaml: str
    start: bool
    def __init__(self, spec_yaml: _Optional[str] = ..., start: _Optional[bool] = ...) -> None: ...

class ExperimentRef(_message.Message):
    __slots__ = ("experiment_id", "reason")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    reason: str
    def __init__(self, experiment_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Experiment(_message.Message):
    __slots__ = ("experiment_id", "name", "state", "spec_yaml", "current_stage", "current_stage_index", "current_round", "created_unix", "updated_unix", "error", "latest_model_version_id", "waiting_reason", "privacy")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SPEC_YAML_FIELD_NUMBER: _ClassVar[int]
    CURRENT_STAGE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_STAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ROUND_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LATEST_MODEL_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    WAITING_REASON_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    name: str
    state: str
    spec_yaml: str
    current_stage: str
    current_stage_index: int
    current_round: int
    created_unix: float
    updated_unix: float
    error: str
    latest_model_version_id: str
    waiting_reason: str
    privacy: PrivacySpent
    def __init__(self, experiment_id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[str] = ..., spec_yaml: _Optional[str] = ..., current_stage: _Optional[str] = ..., current_stage_index: _Optional[int] = ..., current_round: _Optional[int] = ..., created_unix: _Optional[float] = ..., updated_unix: _Optional[float] = ..., error: _Optional[str] = ..., latest_model_version_id: _Optional[str] = ..., waiting_reason: _Optional[str] = ..., privacy: _Optional[_Union[PrivacySpent, _Mapping]] = ...) -> None: ...

class PrivacySpent(_message.Message):
    __slots__ = ("level", "epsilon", "delta", "target_epsilon", "accountant", "rounds", "budget_spent", "site_epsilons")
    class SiteEpsilonsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    TARGET_EPSILON_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTANT_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_SPENT_FIELD_NUMBER: _ClassVar[int]
    SITE_EPSILONS_FIELD_NUMBER: _ClassVar[int]
    level: str
    epsilon: float
    delta: float
    target_epsilon: float
    accountant: str
    rounds: int
    budget_spent: str
    site_epsilons: _containers.ScalarMap[str, float]
    def __init__(self, level: _Optional[str] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., target_epsilon: _Optional[float] = ..., accountant: _Optional[str] = ..., rounds: _Optional[int] = ..., budget_spent: _Optional[str] = ..., site_epsilons: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ListExperimentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListExperimentsResponse(_message.Message):
    __slots__ = ("experiments",)
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    experiments: _containers.RepeatedCompositeFieldContainer[Experiment]
    def __init__(self, experiments: _Optional[_Iterable[_Union[Experiment, _Mapping]]] = ...) -> None: ...

class ListRoundsRequest(_message.Message):
    __slots__ = ("experiment_id", "page_size", "page_token")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    page_size: int
    page_token: str
    def __init__(self, experiment_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class RoundInfo(_message.Message):
    __slots__ = ("round_id", "experiment_id", "stage", "stage_index", "round", "state", "tasks_total", "updates_received", "opened_unix", "deadline_unix", "closed_unix", "reason", "metrics", "model_version_id", "site_updates", "waiting_for", "waiting_reason")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TASKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    UPDATES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    OPENED_UNIX_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    CLOSED_UNIX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_UPDATES_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_FIELD_NUMBER: _ClassVar[int]
    WAITING_REASON_FIELD_NUMBER: _ClassVar[int]
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
    closed_unix: float
    reason: str
    metrics: _containers.ScalarMap[str, float]
    model_version_id: str
    site_updates: _containers.RepeatedCompositeFieldContainer[SiteUpdate]
    waiting_for: _containers.RepeatedScalarFieldContainer[str]
    waiting_reason: str
    def __init__(self, round_id: _Optional[str] = ..., experiment_id: _Optional[str] = ..., stage: _Optional[str] = ..., stage_index: _Optional[int] = ..., round: _Optional[int] = ..., state: _Optional[str] = ..., tasks_total: _Optional[int] = ..., updates_received: _Optional[int] = ..., opened_unix: _Optional[float] = ..., deadline_unix: _Optional[float] = ..., closed_unix: _Optional[float] = ..., reason: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., model_version_id: _Optional[str] = ..., site_updates: _Optional[_Iterable[_Union[SiteUpdate, _Mapping]]] = ..., waiting_for: _Optional[_Iterable[str]] = ..., waiting_reason: _Optional[str] = ...) -> None: ...

class SiteUpdate(_message.Message):
    __slots__ = ("site", "num_examples", "weight", "metrics", "received_bytes", "state")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SITE_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    site: str
    num_examples: int
    weight: float
    metrics: _containers.ScalarMap[str, float]
    received_bytes: int
    state: str
    def __init__(self, site: _Optional[str] = ..., num_examples: _Optional[int] = ..., weight: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ..., received_bytes: _Optional[int] = ..., state: _Optional[str] = ...) -> None: ...

class ListRoundsResponse(_message.Message):
    __slots__ = ("rounds", "next_page_token")
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rounds: _containers.RepeatedCompositeFieldContainer[RoundInfo]
    next_page_token: str
    def __init__(self, rounds: _Optional[_Iterable[_Union[RoundInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AddSiteRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class AddSiteResponse(_message.Message):
    __slots__ = ("name", "token")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    token: str
    def __init__(self, name: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class SiteRef(_message.Message):
    __slots__ = ("name", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ListSitesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SiteInfo(_message.Message):
    __slots__ = ("name", "created_unix", "revoked_unix", "workers_online", "last_seen_unix")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    REVOKED_UNIX_FIELD_NUMBER: _ClassVar[int]
    WORKERS_ONLINE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_FIELD_NUMBER: _ClassVar[int]
    name: str
    created_unix: float
    revoked_unix: float
    workers_online: int
    last_seen_unix: float
    def __init__(self, name: _Optional[str] = ..., created_unix: _Optional[float] = ..., revoked_unix: _Optional[float] = ..., workers_online: _Optional[int] = ..., last_seen_unix: _Optional[float] = ...) -> None: ...

class ListSitesResponse(_message.Message):
    __slots__ = ("sites",)
    SITES_FIELD_NUMBER: _ClassVar[int]
    sites: _containers.RepeatedCompositeFieldContainer[SiteInfo]
    def __init__(self, sites: _Optional[_Iterable[_Union[SiteInfo, _Mapping]]] = ...) -> None: ...

class RevokeSiteResponse(_message.Message):
    __slots__ = ("site", "tasks_failed", "tasks_cancelled")
    SITE_FIELD_NUMBER: _ClassVar[int]
    TASKS_FAILED_FIELD_NUMBER: _ClassVar[int]
    TASKS_CANCELLED_FIELD_NUMBER: _ClassVar[int]
    site: SiteInfo
    tasks_failed: int
    tasks_cancelled: int
    def __init__(self, site: _Optional[_Union[SiteInfo, _Mapping]] = ..., tasks_failed: _Optional[int] = ..., tasks_cancelled: _Optional[int] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("site", "worker_id", "state", "last_seen_unix", "device", "current_task_id", "dataset_sizes")
    class DatasetSizesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SITE_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_SIZES_FIELD_NUMBER: _ClassVar[int]
    site: str
    worker_id: str
    state: str
    last_seen_unix: float
    device: str
    current_task_id: str
    dataset_sizes: _containers.ScalarMap[str, int]
    def __init__(self, site: _Optional[str] = ..., worker_id: _Optional[str] = ..., state: _Optional[str] = ..., last_seen_unix: _Optional[float] = ..., device: _Optional[str] = ..., current_task_id: _Optional[str] = ..., dataset_sizes: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("experiment_id",)
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    def __init__(self, experiment_id: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("version_id",)
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    version_id: str
    def __init__(self, version_id: _Optional[str] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("version_id", "experiment_id", "version", "parent_id", "stage", "round", "kind", "blob_digest", "manifest", "metrics", "sites", "num_examples", "created_unix", "files", "pinned", "pruned_unix")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    BLOB_DIGEST_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    PRUNED_UNIX_FIELD_NUMBER: _ClassVar[int]
    version_id: str
    experiment_id: str
    version: int
    parent_id: str
    stage: str
    round: int
    kind: str
    blob_digest: str
    manifest: _common_pb2.Manifest
    metrics: _containers.ScalarMap[str, float]
    sites: _containers.RepeatedScalarFieldContainer[str]
    num_examples: int
    created_unix: float
    files: _containers.RepeatedScalarFieldContainer[str]
    pinned: str
    pruned_unix: float
    def __init__(self, version_id: _Optional[str] = ..., experiment_id: _Optional[str] = ..., version: _Optional[int] = ..., parent_id: _Optional[str] = ..., stage: _Optional[str] = ..., round: _Optional[int] = ..., kind: _Optional[str] = ..., blob_digest: _Optional[str] = ..., manifest: _Optional[_Union[_common_pb2.Manifest, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., sites: _Optional[_Iterable[str]] = ..., num_examples: _Optional[int] = ..., created_unix: _Optional[float] = ..., files: _Optional[_Iterable[str]] = ..., pinned: _Optional[str] = ..., pruned_unix: _Optional[float] = ...) -> None: ...

class PinModelRequest(_message.Message):
    __slots__ = ("version_id", "pinned", "reason")
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    version_id: str
    pinned: bool
    reason: str
    def __init__(self, version_id: _Optional[str] = ..., pinned: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class GetStorageUsageRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExperimentStorage(_message.Message):
    __slots__ = ("experiment_id", "name", "versions", "versions_pruned", "version_bytes", "spool_bytes")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_PRUNED_FIELD_NUMBER: _ClassVar[int]
    VERSION_BYTES_FIELD_NUMBER: _ClassVar[int]
    SPOOL_BYTES_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    name: str
    versions: int
    versions_pruned: int
    version_bytes: int
    spool_bytes: int
    def __init__(self, experiment_id: _Optional[str] = ..., name: _Optional[str] = ..., versions: _Optional[int] = ..., versions_pruned: _Optional[int] = ..., version_bytes: _Optional[int] = ..., spool_bytes: _Optional[int] = ...) -> None: ...

class StorageUsage(_message.Message):
    __slots__ = ("blob_bytes", "blob_count", "unreferenced_bytes", "unreferenced_blobs", "spool_bytes", "stale_spool_bytes", "work_bytes", "retention_keep_last", "versions_to_prune", "experiments")
    BLOB_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOB_COUNT_FIELD_NUMBER: _ClassVar[int]
    UNREFERENCED_BYTES_FIELD_NUMBER: _ClassVar[int]
    UNREFERENCED_BLOBS_FIELD_NUMBER: _ClassVar[int]
    SPOOL_BYTES_FIELD_NUMBER: _ClassVar[int]
    STALE_SPOOL_BYTES_FIELD_NUMBER: _ClassVar[int]
    WORK_BYTES_FIELD_NUMBER: _ClassVar[int]
    RETENTION_KEEP_LAST_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_TO_PRUNE_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    blob_bytes: int
    blob_count: int
    unreferenced_bytes: int
    unreferenced_blobs: int
    spool_bytes: int
    stale_spool_bytes: int
    work_bytes: int
    retention_keep_last: int
    versions_to_prune: int
    experiments: _containers.RepeatedCompositeFieldContainer[ExperimentStorage]
    def __init__(self, blob_bytes: _Optional[int] = ..., blob_count: _Optional[int] = ..., unreferenced_bytes: _Optional[int] = ..., unreferenced_blobs: _Optional[int] = ..., spool_bytes: _Optional[int] = ..., stale_spool_bytes: _Optional[int] = ..., work_bytes: _Optional[int] = ..., retention_keep_last: _Optional[int] = ..., versions_to_prune: _Optional[int] = ..., experiments: _Optional[_Iterable[_Union[ExperimentStorage, _Mapping]]] = ...) -> None: ...

class CollectGarbageRequest(_message.Message):
    __slots__ = ("dry_run",)
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    def __init__(self, dry_run: _Optional[bool] = ...) -> None: ...

class CollectGarbageReport(_message.Message):
    __slots__ = ("dry_run", "versions_pruned", "pruned_version_ids", "strategy_states_deleted", "blobs_deleted", "blob_bytes_freed", "blobs_kept_young", "spool_entries_deleted", "spool_bytes_freed", "seconds")
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_PRUNED_FIELD_NUMBER: _ClassVar[int]
    PRUNED_VERSION_IDS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_STATES_DELETED_FIELD_NUMBER: _ClassVar[int]
    BLOBS_DELETED_FIELD_NUMBER: _ClassVar[int]
    BLOB_BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    BLOBS_KEPT_YOUNG_FIELD_NUMBER: _ClassVar[int]
    SPOOL_ENTRIES_DELETED_FIELD_NUMBER: _ClassVar[int]
    SPOOL_BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    versions_pruned: int
    pruned_version_ids: _containers.RepeatedScalarFieldContainer[str]
    strategy_states_deleted: int
    blobs_deleted: int
    blob_bytes_freed: int
    blobs_kept_young: int
    spool_entries_deleted: int
    spool_bytes_freed: int
    seconds: float
    def __init__(self, dry_run: _Optional[bool] = ..., versions_pruned: _Optional[int] = ..., pruned_version_ids: _Optional[_Iterable[str]] = ..., strategy_states_deleted: _Optional[int] = ..., blobs_deleted: _Optional[int] = ..., blob_bytes_freed: _Optional[int] = ..., blobs_kept_young: _Optional[int] = ..., spool_entries_deleted: _Optional[int] = ..., spool_bytes_freed: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class ExportedFile(_message.Message):
    __slots__ = ("name", "content")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    content: bytes
    def __init__(self, name: _Optional[str] = ..., content: _Optional[bytes] = ...) -> None: ...

class ExportModelResponse(_message.Message):
    __slots__ = ("manifest", "chunk", "file")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    manifest: _common_pb2.Manifest
    chunk: _common_pb2.TensorChunk
    file: ExportedFile
    def __init__(self, manifest: _Optional[_Union[_common_pb2.Manifest, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.TensorChunk, _Mapping]] = ..., file: _Optional[_Union[ExportedFile, _Mapping]] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("experiment_id", "after_id", "follow")
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    experiment_id: str
    after_id: int
    follow: bool
    def __init__(self, experiment_id: _Optional[str] = ..., after_id: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("event_id", "created_unix", "experiment_id", "kind", "message", "data_json")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    event_id: int
    created_unix: float
    experiment_id: str
    kind: str
    message: str
    data_json: str
    def __init__(self, event_id: _Optional[int] = ..., created_unix: _Optional[float] = ..., experiment_id: _Optional[str] = ..., kind: _Optional[str] = ..., message: _Optional[str] = ..., data_json: _Optional[str] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CoordinatorStatus(_message.Message):
    __slots__ = ("version", "uptime_seconds", "experiments_running", "workers_online", "database", "data_dir")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENTS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    WORKERS_ONLINE_FIELD_NUMBER: _ClassVar[int]
    DATABASE_FIELD_NUMBER: _ClassVar[int]
    DATA_DIR_FIELD_NUMBER: _ClassVar[int]
    version: str
    uptime_seconds: float
    experiments_running: int
    workers_online: int
    database: str
    data_dir: str
    def __init__(self, version: _Optional[str] = ..., uptime_seconds: _Optional[float] = ..., experiments_running: _Optional[int] = ..., workers_online: _Optional[int] = ..., database: _Optional[str] = ..., data_dir: _Optional[str] = ...) -> None: ...
