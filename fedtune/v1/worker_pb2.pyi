from fedtune.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_UNSPECIFIED: _ClassVar[TaskKind]
    TASK_KIND_INIT: _ClassVar[TaskKind]
    TASK_KIND_TRAIN: _ClassVar[TaskKind]
    TASK_KIND_PERSONALIZE: _ClassVar[TaskKind]
    TASK_KIND_EVALUATE: _ClassVar[TaskKind]
    TASK_KIND_SECAGG_ADVERTISE: _ClassVar[TaskKind]
    TASK_KIND_SECAGG_SHARE: _ClassVar[TaskKind]
    TASK_KIND_SECAGG_UNMASK: _ClassVar[TaskKind]
TASK_KIND_UNSPECIFIED: TaskKind
TASK_KIND_INIT: TaskKind
TASK_KIND_TRAIN: TaskKind
TASK_KIND_PERSONALIZE: TaskKind
TASK_KIND_EVALUATE: TaskKind
TASK_KIND_SECAGG_ADVERTISE: TaskKind
TASK_KIND_SECAGG_SHARE: TaskKind
TASK_KIND_SECAGG_UNMASK: TaskKind

class DeviceInfo(_message.Message):
    __slots__ = ("kind", "name", "memory_bytes", "bf16")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    BF16_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    memory_bytes: int
    bf16: bool
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., bf16: _Optional[bool] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("site", "token", "worker_version", "device", "dataset_sizes")
    class DatasetSizesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SITE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    WORKER_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DATASET_SIZES_FIELD_NUMBER: _ClassVar[int]
    site: str
    token: str
    worker_version: str
    device: DeviceInfo
    dataset_sizes: _containers.ScalarMap[str, int]
    def __init__(self, site: _Optional[str] = ..., token: _Optional[str] = ..., worker_version: _Optional[str] = ..., device: _Optional[_Union[DeviceInfo, _Mapping]] = ..., dataset_sizes: _Optional[_Mapping[str, int]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("worker_id", "heartbeat_seconds")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    heartbeat_seconds: float
    def __init__(self, worker_id: _Optional[str] = ..., heartbeat_seconds: _Optional[float] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("worker_id", "task_id", "progress")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    task_id: str
    progress: str
    def __init__(self, worker_id: _Optional[str] = ..., task_id: _Optional[str] = ..., progress: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("cancel_task",)
    CANCEL_TASK_FIELD_NUMBER: _ClassVar[int]
    cancel_task: bool
    def __init__(self, cancel_task: _Optional[bool] = ...) -> None: ...

class PullTaskRequest(_message.Message):
    __slots__ = ("worker_id", "wait_seconds")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    wait_seconds: float
    def __init__(self, worker_id: _Optional[str] = ..., wait_seconds: _Optional[float] = ...) -> None: ...

class SecAggKeys(_message.Message):
    __slots__ = ("site_index", "cipher_key", "mask_key", "seed_commitment")
    SITE_INDEX_FIELD_NUMBER: _ClassVar[int]
    CIPHER_KEY_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_FIELD_NUMBER: _ClassVar[int]
    SEED_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    site_index: int
    cipher_key: bytes
    mask_key: bytes
    seed_commitment: bytes
    def __init__(self, site_index: _Optional[int] = ..., cipher_key: _Optional[bytes] = ..., mask_key: _Optional[bytes] = ..., seed_commitment: _Optional[bytes] = ...) -> None: ...

class SecAggTask(_message.Message):
    __slots__ = ("round_id", "site_index", "num_sites", "sites", "graph_seed", "boxes", "survivors", "dropped")
    class BoxesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: bytes
        def __init__(self, key: _Optional[int] = ..., value: _Optional[bytes] = ...) -> None: ...
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_SITES_FIELD_NUMBER: _ClassVar[int]
    SITES_FIELD_NUMBER: _ClassVar[int]
    GRAPH_SEED_FIELD_NUMBER: _ClassVar[int]
    BOXES_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    round_id: str
    site_index: int
    num_sites: int
    sites: _containers.RepeatedCompositeFieldContainer[SecAggKeys]
    graph_seed: bytes
    boxes: _containers.ScalarMap[int, bytes]
    survivors: _containers.RepeatedScalarFieldContainer[int]
    dropped: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, round_id: _Optional[str] = ..., site_index: _Optional[int] = ..., num_sites: _Optional[int] = ..., sites: _Optional[_Iterable[_Union[SecAggKeys, _Mapping]]] = ..., graph_seed: _Optional[bytes] = ..., boxes: _Optional[_Mapping[int, bytes]] = ..., survivors: _Optional[_Iterable[int]] = ..., dropped: _Optional[_Iterable[int]] = ...) -> None: ...

class SecAggRevealedShare(_message.Message):
    __slots__ = ("owner", "x", "mask_key", "share")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    owner: int
    x: int
    mask_key: bool
    share: bytes
    def __init__(self, owner: _Optional[int] = ..., x: _Optional[int] = ..., mask_key: _Optional[bool] = ..., share: _Optional[bytes] = ...) -> None: ...

class SubmitSecAggRequest(_message.Message):
    __slots__ = ("task_id", "keys", "boxes", "shares")
    class BoxesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: bytes
        def __init__(self, key: _Optional[int] = ..., value: _Optional[bytes] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    BOXES_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    keys: SecAggKeys
    boxes: _containers.ScalarMap[int, bytes]
    shares: _containers.RepeatedCompositeFieldContainer[SecAggRevealedShare]
    def __init__(self, task_id: _Optional[str] = ..., keys: _Optional[_Union[SecAggKeys, _Mapping]] = ..., boxes: _Optional[_Mapping[int, bytes]] = ..., shares: _Optional[_Iterable[_Union[SecAggRevealedShare, _Mapping]]] = ...) -> None: ...

class SubmitSecAggResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "kind", "experiment_id", "stage", "stage_index", "round", "spec_json", "model_version_id", "model_manifest", "deadline_unix", "update_kind", "base_version_id", "secagg")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_MANIFEST_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    UPDATE_KIND_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    SECAGG_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    kind: TaskKind
    experiment_id: str
    stage: str
    stage_index: int
    round: int
    spec_json: str
    model_version_id: str
    model_manifest: _common_pb2.Manifest
    deadline_unix: float
    update_kind: str
    base_version_id: str
    secagg: SecAggTask
    def __init__(self, task_id: _Optional[str] = ..., kind: _Optional[_Union[TaskKind, str]] = ..., experiment_id: _Optional[str] = ..., stage: _Optional[str] = ..., stage_index: _Optional[int] = ..., round: _Optional[int] = ..., spec_json: _Optional[str] = ..., model_version_id: _Optional[str] = ..., model_manifest: _Optional[_Union[_common_pb2.Manifest, _Mapping]] = ..., deadline_unix: _Optional[float] = ..., update_kind: _Optional[str] = ..., base_version_id: _Optional[str] = ..., secagg: _Optional[_Union[SecAggTask, _Mapping]] = ...) -> None: ...

class PullTaskResponse(_message.Message):
    __slots__ = ("has_task", "task")
    HAS_TASK_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    has_task: bool
    task: Task
    def __init__(self, has_task: _Optional[bool] = ..., task: _Optional[_Union[Task, _Mapping]] = ...) -> None: ...

class FetchTensorsRequest(_message.Message):
    __slots__ = ("version_id", "start_tensor", "start_offset", "chunk_size")
    VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    START_TENSOR_FIELD_NUMBER: _ClassVar[int]
    START_OFFSET_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    version_id: str
    start_tensor: int
    start_offset: int
    chunk_size: int
    def __init__(self, version_id: _Optional[str] = ..., start_tensor: _Optional[int] = ..., start_offset: _Optional[int] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class FetchTensorsResponse(_message.Message):
    __slots__ = ("manifest", "chunk")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    manifest: _common_pb2.Manifest
    chunk: _common_pb2.TensorChunk
    def __init__(self, manifest: _Optional[_Union[_common_pb2.Manifest, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.TensorChunk, _Mapping]] = ...) -> None: ...

class UpdateEncoding(_message.Message):
    __slots__ = ("values", "int8_block_size", "topk")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    INT8_BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOPK_FIELD_NUMBER: _ClassVar[int]
    values: str
    int8_block_size: int
    topk: bool
    def __init__(self, values: _Optional[str] = ..., int8_block_size: _Optional[int] = ..., topk: _Optional[bool] = ...) -> None: ...

class UpdateHeader(_message.Message):
    __slots__ = ("task_id", "num_examples", "metrics", "manifest", "files", "resume", "encoding")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class FilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    num_examples: int
    metrics: _containers.ScalarMap[str, float]
    manifest: _common_pb2.Manifest
    files: _containers.ScalarMap[str, bytes]
    resume: bool
    encoding: UpdateEncoding
    def __init__(self, task_id: _Optional[str] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., manifest: _Optional[_Union[_common_pb2.Manifest, _Mapping]] = ..., files: _Optional[_Mapping[str, bytes]] = ..., resume: _Optional[bool] = ..., encoding: _Optional[_Union[UpdateEncoding, _Mapping]] = ...) -> None: ...

class PushUpdateRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UpdateHeader
    chunk: _common_pb2.TensorChunk
    def __init__(self, header: _Optional[_Union[UpdateHeader, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.TensorChunk, _Mapping]] = ...) -> None: ...

class PushUpdateResponse(_message.Message):
    __slots__ = ("update_id", "received_bytes")
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    update_id: str
    received_bytes: int
    def __init__(self, update_id: _Optional[str] = ..., received_bytes: _Optional[int] = ...) -> None: ...

class GetUploadStatusRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class GetUploadStatusResponse(_message.Message):
    __slots__ = ("in_progress", "next_tensor", "next_offset", "complete")
    IN_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    NEXT_TENSOR_FIELD_NUMBER: _ClassVar[int]
    NEXT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    in_progress: bool
    next_tensor: int
    next_offset: int
    complete: bool
    def __init__(self, in_progress: _Optional[bool] = ..., next_tensor: _Optional[int] = ..., next_offset: _Optional[int] = ..., complete: _Optional[bool] = ...) -> None: ...

class ReportResultRequest(_message.Message):
    __slots__ = ("task_id", "ok", "error", "metrics", "num_examples")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    ok: bool
    error: str
    metrics: _containers.ScalarMap[str, float]
    num_examples: int
    def __init__(self, task_id: _Optional[str] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., num_examples: _Optional[int] = ...) -> None: ...

class ReportResultResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
