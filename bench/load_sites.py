"""Synthetic sites for bench/load.py: one process runs many sites on one asyncio loop (grpc.aio).

Each site registers, heartbeats like a worker daemon, long-polls PullTask and, for every task it
leases, downloads the round's model (FetchTensors), "trains" for a random fraction of
`--train-seconds` (a sleep: no training) and pushes an update of the model's layout (the bytes are
made once per process and reused, so the load generator spends its CPU on gRPC, not on numpy). An
INIT task gets the stage's first version: `--tensors` float32 tensors of `--update-mib` MiB in all.

A call refused with RESOURCE_EXHAUSTED ``busy:`` is retried with backoff, as the worker daemon does
(`worker.retry`); every error is counted by method, status code and message code. Timestamps are
``time.time()`` (the coordinator's rounds are on the same clock). On SIGTERM the process stops and
writes its records as JSON to `--records`.

    python bench/load_sites.py --target 127.0.0.1:PORT --sites-file sites.json --records out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from fedtune.lifetime import end_with_parent_from_env  # noqa: E402
from fedtune.serde import UpdateHeaderRecord, task_from_proto, update_header_to_proto  # noqa: E402
from fedtune.tensorstream.encoder import iter_chunks_from_arrays, manifest_for_arrays  # noqa: E402
from fedtune.tensorstream.manifest import Manifest  # noqa: E402
from fedtune.tensorstream.serde import chunk_to_proto  # noqa: E402
from fedtune.v1 import worker_pb2, worker_pb2_grpc  # noqa: E402

CHUNK_BYTES = 1 << 20
CHANNELS = 4
MESSAGE_LIMIT = 64 << 20
BUSY_BACKOFF_SECONDS = (0.25, 4.0)


class Upload:
    """One update's bytes as ready-made stream messages (made once per process, reused by every site)."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.manifest = manifest_for_arrays(arrays)
        self.chunks = [
            worker_pb2.PushUpdateRequest(chunk=chunk_to_proto(chunk))
            for chunk in iter_chunks_from_arrays(arrays, self.manifest, CHUNK_BYTES)
        ]


class Sites:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stop = asyncio.Event()
        self.errors: Counter[str] = Counter()
        self.records: list[dict[str, Any]] = []
        self.busy_retries = 0
        self.rng = np.random.default_rng(args.seed)
        self._uploads: dict[str, Upload] = {}
        self._registering = asyncio.Semaphore(16)

    # -- the bytes ------------------------------------------------------------------------------------
    def initial(self) -> Upload:
        tensors = max(1, self.args.tensors)
        numel = max(1, int(self.args.update_mib * (1 << 20) / 4 / tensors))
        return Upload(
            {
                f"layer.{i}.lora_A.weight": self.rng.standard_normal(numel).astype(np.float32)
                for i in range(tensors)
            }
        )

    def update_for(self, manifest: Manifest) -> Upload:
        key = manifest.digest
        if key not in self._uploads:
            arrays = {
                t.name: (self.rng.standard_normal(t.shape) * 0.01).astype(np.float32)
                for t in manifest.tensors
            }
            self._uploads = {key: Upload(arrays)}  # only the current model's layout is kept
        return self._uploads[key]

    # -- calls ----------------------------------------------------------------------------------------
    def error(self, method: str, err: grpc.aio.AioRpcError) -> None:
        details = err.details() or ""
        prefix = details.split(":", 1)[0] if ":" in details[:40] else ""
        self.errors[f"{method}:{err.code().name}" + (f":{prefix}" if prefix else "")] += 1

    async def retrying(self, method: str, call: Any) -> Any:
        """`call()` until it is not refused `busy:` (RESOURCE_EXHAUSTED), with jittered backoff."""
        delay = BUSY_BACKOFF_SECONDS[0]
        while True:
            try:
                return await call()
            except grpc.aio.AioRpcError as err:
                self.error(method, err)
                busy = err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and (err.details() or "").startswith(
                    "busy:"
                )
                if not busy or self.stop.is_set():
                    raise
                self.busy_retries += 1
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, BUSY_BACKOFF_SECONDS[1])

    async def push(
        self, stub: worker_pb2_grpc.WorkerStub, metadata: Any, header: UpdateHeaderRecord, upload: Upload
    ) -> None:
        async def requests() -> Any:
            yield worker_pb2.PushUpdateRequest(header=update_header_to_proto(header))
            for message in upload.chunks:
                yield message

        await self.retrying("PushUpdate", lambda: stub.PushUpdate(requests(), metadata=metadata, timeout=900))

    async def fetch(self, stub: worker_pb2_grpc.WorkerStub, metadata: Any, version_id: str) -> None:
        async def download() -> None:
            async for _ in stub.FetchTensors(
                worker_pb2.FetchTensorsRequest(version_id=version_id), metadata=metadata, timeout=900
            ):
                pass

        await self.retrying("FetchTensors", download)

    async def heartbeats(self, stub: worker_pb2_grpc.WorkerStub, metadata: Any, worker_id: str) -> None:
        every = self.args.heartbeat_seconds
        await asyncio.sleep(every * random.random())  # spread the sites over the interval
        while not self.stop.is_set():
            try:
                await stub.Heartbeat(
                    worker_pb2.HeartbeatRequest(worker_id=worker_id, progress="bench"),
                    metadata=metadata,
                    timeout=60,
                )
            except grpc.aio.AioRpcError as err:
                self.error("Heartbeat", err)
            try:
                await asyncio.wait_for(self.stop.wait(), every)
            except TimeoutError:
                pass

    async def pull(self, stub: worker_pb2_grpc.WorkerStub, metadata: Any, worker_id: str) -> Any:
        """A long-poll that ends early when the process stops; None then."""
        call = stub.PullTask(
            worker_pb2.PullTaskRequest(worker_id=worker_id, wait_seconds=self.args.pull_wait),
            metadata=metadata,
            timeout=self.args.pull_wait + 60,
        )
        stopping = asyncio.ensure_future(self.stop.wait())
        pulling = asyncio.ensure_future(call)
        done, _ = await asyncio.wait({pulling, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if pulling not in done:
            call.cancel()
            return None
        stopping.cancel()
        return pulling.result()

    async def site(self, stub: worker_pb2_grpc.WorkerStub, name: str, token: str) -> None:
        metadata = [("x-fedtune-site", name), ("authorization", f"Bearer {token}")]
        async with self._registering:
            answer = await self.retrying(
                "Register",
                lambda: stub.Register(
                    worker_pb2.RegisterRequest(site=name, token=token, worker_version="bench-load"),
                    timeout=60,
                ),
            )
        beats = asyncio.create_task(self.heartbeats(stub, metadata, answer.worker_id))
        while not self.stop.is_set():
            try:
                reply = await self.retrying("PullTask", lambda: self.pull(stub, metadata, answer.worker_id))
                if reply is None or not reply.has_task:
                    continue
                await self.run_task(stub, metadata, name, task_from_proto(reply.task))
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.5)  # counted by `retrying`
        await beats

    async def run_task(self, stub: worker_pb2_grpc.WorkerStub, metadata: Any, name: str, task: Any) -> None:
        record: dict[str, Any] = {"site": name, "round": task.round, "kind": task.kind, "leased": time.time()}
        self.records.append(record)
        if task.kind == "init":
            upload = self.initial()
            header = UpdateHeaderRecord(
                task_id=task.task_id,
                num_examples=0,
                manifest=upload.manifest,
                files={"adapter_config.json": b'{"peft_type": "LORA", "r": 4}'},
            )
            await self.push(stub, metadata, header, upload)
            record["uploaded"] = time.time()
            return
        record["download_start"] = time.time()
        await self.fetch(stub, metadata, task.model_version_id)
        record["downloaded"] = time.time()
        await asyncio.sleep(self.args.train_seconds * random.random())
        assert task.model_manifest is not None
        upload = self.update_for(task.model_manifest)
        header = UpdateHeaderRecord(
            task_id=task.task_id,
            num_examples=100,
            manifest=upload.manifest,
            metrics={"loss": random.random()},
        )
        record["upload_start"] = time.time()
        await self.push(stub, metadata, header, upload)
        record["uploaded"] = time.time()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sites: dict[str, str] = json.loads(Path(args.sites_file).read_text())
    state = Sites(args)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, state.stop.set)
    loop.add_signal_handler(signal.SIGINT, state.stop.set)
    options = [
        ("grpc.max_send_message_length", MESSAGE_LIMIT),
        ("grpc.max_receive_message_length", MESSAGE_LIMIT),
    ]
    channels = [grpc.aio.insecure_channel(args.target, options=options) for _ in range(CHANNELS)]
    stubs = [worker_pb2_grpc.WorkerStub(c) for c in channels]  # type: ignore[no-untyped-call]
    tasks = [
        asyncio.create_task(state.site(stubs[i % CHANNELS], name, token))
        for i, (name, token) in enumerate(sites.items())
    ]
    await state.stop.wait()
    await asyncio.wait(tasks, timeout=30)
    for channel in channels:
        await channel.close(grace=1)
    return {"records": state.records, "errors": dict(state.errors), "busy_retries": state.busy_retries}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", required=True)
    parser.add_argument("--sites-file", required=True, help="JSON {site: token}")
    parser.add_argument("--records", required=True, type=Path)
    parser.add_argument("--update-mib", type=float, default=1.0)
    parser.add_argument("--tensors", type=int, default=8)
    parser.add_argument("--train-seconds", type=float, default=0.0)
    parser.add_argument("--heartbeat-seconds", type=float, default=5.0)
    parser.add_argument("--pull-wait", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    end_with_parent_from_env()
    result = asyncio.run(run(args))
    args.records.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
