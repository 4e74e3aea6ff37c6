"""A scripted worker written against the real stubs: registers, pulls, pushes random numpy updates."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import grpc
import numpy as np

from fedtune.compression.encoding import UpdateEncoding
from fedtune.serde import UpdateHeaderRecord, task_from_proto, update_header_to_proto
from fedtune.tensorstream.dtypes import wire_dtype
from fedtune.tensorstream.encoder import iter_chunks_from_arrays, manifest_for_arrays
from fedtune.tensorstream.manifest import Manifest
from fedtune.tensorstream.serde import chunk_to_proto, manifest_from_proto
from fedtune.v1 import worker_pb2, worker_pb2_grpc

MAX_MESSAGE_BYTES = 32 << 20
ADAPTER_CONFIG = b'{"peft_type": "LORA", "r": 4}'


def initial_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "layer.0.lora_A.weight": rng.standard_normal((4, 16)).astype(np.float32),
        "layer.0.lora_B.weight": rng.standard_normal((16, 4)).astype(np.float32),
        "layer.1.bias": rng.standard_normal((7,)).astype(np.float32),
    }


def random_like(manifest: Manifest, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for t in manifest.tensors:
        assert t.dtype == "float32"
        out[t.name] = rng.standard_normal(t.shape).astype(np.float32)
    return out


@dataclass
class FakeWorker:
    target: str
    site: str
    token: str
    worker_id: str = ""
    channel: grpc.Channel = field(init=False)
    stub: worker_pb2_grpc.WorkerStub = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(
            self.target,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self.stub = worker_pb2_grpc.WorkerStub(self.channel)

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [("x-fedtune-site", self.site), ("authorization", f"Bearer {self.token}")]

    def close(self) -> None:
        self.channel.close()

    def register(
        self,
        *,
        worker_version: str = "fake",
        device_name: str = "",
        dataset_sizes: Mapping[str, int] | None = None,
    ) -> str:
        response = self.stub.Register(
            worker_pb2.RegisterRequest(
                site=self.site,
                token=self.token,
                worker_version=worker_version,
                device=worker_pb2.DeviceInfo(kind="cpu", name=device_name),
                dataset_sizes=dict(dataset_sizes or {}),
            ),
            timeout=10,
        )
        self.worker_id = response.worker_id
        return self.worker_id

    def heartbeat(self, task_id: str = "", progress: str = "") -> bool:
        response = self.stub.Heartbeat(
            worker_pb2.HeartbeatRequest(worker_id=self.worker_id, task_id=task_id, progress=progress),
            metadata=self.metadata,
            timeout=10,
        )
        return bool(response.cancel_task)

    def pull(self, wait_seconds: float = 5.0) -> worker_pb2.Task | None:
        response = self.stub.PullTask(
            worker_pb2.PullTaskRequest(worker_id=self.worker_id, wait_seconds=wait_seconds),
            metadata=self.metadata,
            timeout=wait_seconds + 10,
        )
        return response.task if response.has_task else None

    def fetch(self, version_id: str) -> dict[str, np.ndarray]:
        manifest: Manifest | None = None
        buffers: list[bytearray] = []
        for item in self.stub.FetchTensors(
            worker_pb2.FetchTensorsRequest(version_id=version_id), metadata=self.metadata, timeout=30
        ):
            if item.WhichOneof("item") == "manifest":
                manifest = manifest_from_proto(item.manifest)
                buffers = [bytearray() for _ in manifest.tensors]
            else:
                buffers[item.chunk.tensor_index] += item.chunk.data
        assert manifest is not None
        return {
            t.name: np.frombuffer(bytes(buf), wire_dtype(t.dtype).storage).reshape(t.shape).copy()
            for t, buf in zip(manifest.tensors, buffers, strict=True)
        }

    def push_requests(
        self,
        task_id: str,
        arrays: Mapping[str, np.ndarray],
        *,
        num_examples: int,
        metrics: Mapping[str, float] | None = None,
        files: Mapping[str, bytes] | None = None,
        chunk_bytes: int = 256,
        manifest: Manifest | None = None,
        resume_from: tuple[int, int] | None = None,
        stop_after_chunks: int | None = None,
        encoding: UpdateEncoding | None = None,
        dtypes: Mapping[str, str] | None = None,
    ) -> Iterator[worker_pb2.PushUpdateRequest]:
        manifest = manifest or manifest_for_arrays(dict(arrays), dict(dtypes or {}))
        header = UpdateHeaderRecord(
            task_id=task_id,
            num_examples=num_examples,
            manifest=manifest,
            metrics=dict(metrics or {}),
            files=dict(files or {}),
            resume=resume_from is not None,
            encoding=encoding or UpdateEncoding(),
        )
        yield worker_pb2.PushUpdateRequest(header=update_header_to_proto(header))
        start = resume_from or (0, 0)
        for count, chunk in enumerate(iter_chunks_from_arrays(dict(arrays), manifest, chunk_bytes, *start)):
            if stop_after_chunks is not None and count >= stop_after_chunks:
                return
            yield worker_pb2.PushUpdateRequest(chunk=chunk_to_proto(chunk))

    def push(
        self, task_id: str, arrays: Mapping[str, np.ndarray], **kwargs: object
    ) -> worker_pb2.PushUpdateResponse:
        return self.stub.PushUpdate(
            self.push_requests(task_id, arrays, **kwargs),  # type: ignore[arg-type]
            metadata=self.metadata,
            timeout=30,
        )

    def upload_status(self, task_id: str) -> worker_pb2.GetUploadStatusResponse:
        return self.stub.GetUploadStatus(
            worker_pb2.GetUploadStatusRequest(task_id=task_id), metadata=self.metadata, timeout=10
        )

    def report(
        self,
        task_id: str,
        *,
        ok: bool,
        error: str = "",
        metrics: Mapping[str, float] | None = None,
        num_examples: int = 0,
    ) -> None:
        self.stub.ReportResult(
            worker_pb2.ReportResultRequest(
                task_id=task_id, ok=ok, error=error, metrics=dict(metrics or {}), num_examples=num_examples
            ),
            metadata=self.metadata,
            timeout=10,
        )

    def do_init(self, task: worker_pb2.Task, seed: int = 0) -> str:
        assert task_from_proto(task).kind == "init"
        response = self.push(
            task.task_id, initial_arrays(seed), num_examples=0, files={"adapter_config.json": ADAPTER_CONFIG}
        )
        return response.update_id
