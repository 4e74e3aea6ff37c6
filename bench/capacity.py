"""Coordinator capacity under many idle sites: heartbeats, admin calls and rounds stay fast.

    python bench/capacity.py [--idle-sites 1000] [--train-sites 8] [--rounds 3] [--update-mib 1]

Starts a real coordinator (`fedtune coordinator serve`, SQLite, loopback) as a child process, then from
this process (grpc.aio, a few channels): N idle sites that register, heartbeat every
`--heartbeat-seconds` and long-poll PullTask without pause, and M training sites that take the
experiment's tasks, "train" for `--train-seconds` (sleep), download the round's model and upload a
synthetic update of `--update-mib` MiB. An admin probe calls GetStatus and ListRounds once a second.
Reports heartbeat and admin latency (p50/p99), round times, errors by status, and the coordinator's
threads, open file descriptors, RSS and CPU time (from /proc) with the machine's load average.
Bounded: every loop stops after the rounds commit or `--timeout` seconds. Loopback only.
Writes bench/results/capacity.json (or `--out`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# `python bench/capacity.py` puts bench/ first on the path, where the modules of the bench package
# (cli, config, report ...) would shadow top-level ones: import them as `bench.*` from the root.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from bench.synthetic_run import proc_sample, synthetic_spec_yaml, write_coordinator_config  # noqa: E402
from demo.processes import ProcessGroup, free_port  # noqa: E402
from fedtune.serde import UpdateHeaderRecord, task_from_proto, update_header_to_proto  # noqa: E402
from fedtune.tensorstream.encoder import iter_chunks_from_arrays, manifest_for_arrays  # noqa: E402
from fedtune.tensorstream.manifest import Manifest  # noqa: E402
from fedtune.tensorstream.serde import chunk_to_proto  # noqa: E402
from fedtune.v1 import admin_pb2, admin_pb2_grpc, worker_pb2, worker_pb2_grpc  # noqa: E402

ADMIN_TOKEN = "bench-admin"
CHANNELS = 8
CHUNK_BYTES = 1 << 20


class Stats:
    def __init__(self) -> None:
        self.heartbeat_s: list[float] = []
        self.admin_s: list[float] = []
        self.errors: Counter[str] = Counter()
        self.samples: list[dict[str, float]] = []
        self.download_s: list[float] = []
        self.upload_s: list[float] = []


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def site_metadata(site: str, token: str) -> list[tuple[str, str]]:
    return [("x-fedtune-site", site), ("authorization", f"Bearer {token}")]


def record_error(stats: Stats, method: str, err: grpc.aio.AioRpcError) -> None:
    stats.errors[f"{method}:{err.code().name}"] += 1


async def heartbeat_loop(
    stub: worker_pb2_grpc.WorkerStub,
    site: str,
    token: str,
    worker_id: str,
    every: float,
    stats: Stats,
    stop: asyncio.Event,
) -> None:
    await asyncio.sleep(every * np.random.random())  # spread the sites over the interval
    while not stop.is_set():
        started = time.monotonic()
        try:
            await stub.Heartbeat(
                worker_pb2.HeartbeatRequest(worker_id=worker_id, progress="idle"),
                metadata=site_metadata(site, token),
                timeout=30,
            )
            stats.heartbeat_s.append(time.monotonic() - started)
        except grpc.aio.AioRpcError as err:
            record_error(stats, "Heartbeat", err)
        try:
            await asyncio.wait_for(stop.wait(), every)
        except TimeoutError:
            pass


async def idle_site(
    stub: worker_pb2_grpc.WorkerStub,
    site: str,
    token: str,
    args: argparse.Namespace,
    stats: Stats,
    stop: asyncio.Event,
    registered: asyncio.Semaphore,
) -> None:
    async with registered:
        answer = await stub.Register(
            worker_pb2.RegisterRequest(site=site, token=token, worker_version="bench")
        )
    beats = asyncio.create_task(
        heartbeat_loop(stub, site, token, answer.worker_id, args.heartbeat_seconds, stats, stop)
    )
    while not stop.is_set():
        try:
            pull = stub.PullTask(
                worker_pb2.PullTaskRequest(worker_id=answer.worker_id, wait_seconds=args.pull_wait),
                metadata=site_metadata(site, token),
                timeout=args.pull_wait + 30,
            )
            stop_wait = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait(
                {asyncio.ensure_future(pull), stop_wait}, return_when="FIRST_COMPLETED"
            )
            if stop_wait in done:
                pull.cancel()
                break
            stop_wait.cancel()
        except grpc.aio.AioRpcError as err:
            record_error(stats, "PullTask", err)
            await asyncio.sleep(1.0)
    await beats


def synthetic(manifest: Manifest, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in manifest.tensors}


async def push(
    stub: worker_pb2_grpc.WorkerStub,
    metadata: list[tuple[str, str]],
    header: UpdateHeaderRecord,
    arrays: dict[str, np.ndarray],
) -> None:
    async def requests() -> Any:
        yield worker_pb2.PushUpdateRequest(header=update_header_to_proto(header))
        for chunk in iter_chunks_from_arrays(arrays, header.manifest, CHUNK_BYTES):
            yield worker_pb2.PushUpdateRequest(chunk=chunk_to_proto(chunk))

    await stub.PushUpdate(requests(), metadata=metadata, timeout=300)


async def training_site(
    stub: worker_pb2_grpc.WorkerStub,
    site: str,
    token: str,
    index: int,
    args: argparse.Namespace,
    stats: Stats,
    stop: asyncio.Event,
) -> None:
    metadata = site_metadata(site, token)
    answer = await stub.Register(worker_pb2.RegisterRequest(site=site, token=token, worker_version="bench"))
    beats = asyncio.create_task(
        heartbeat_loop(stub, site, token, answer.worker_id, args.heartbeat_seconds, stats, stop)
    )
    rng = np.random.default_rng(index)
    while not stop.is_set():
        try:
            reply = await stub.PullTask(
                worker_pb2.PullTaskRequest(worker_id=answer.worker_id, wait_seconds=2),
                metadata=metadata,
                timeout=40,
            )
            if not reply.has_task:
                continue
            task = task_from_proto(reply.task)
            if task.kind == "init":
                tensors = max(1, args.tensors)
                numel = int(args.update_mib * (1 << 20) / 4 / tensors)
                arrays = {
                    f"layer.{i}.lora_A.weight": rng.standard_normal(numel).astype(np.float32)
                    for i in range(tensors)
                }
                header = UpdateHeaderRecord(
                    task_id=task.task_id,
                    num_examples=0,
                    manifest=manifest_for_arrays(arrays),
                    files={"adapter_config.json": b'{"peft_type": "LORA", "r": 4}'},
                )
                await push(stub, metadata, header, arrays)
                continue
            started = time.monotonic()
            async for _ in stub.FetchTensors(
                worker_pb2.FetchTensorsRequest(version_id=task.model_version_id),
                metadata=metadata,
                timeout=300,
            ):
                pass
            stats.download_s.append(time.monotonic() - started)
            await asyncio.sleep(args.train_seconds)
            assert task.model_manifest is not None
            update = synthetic(task.model_manifest, rng)
            header = UpdateHeaderRecord(
                task_id=task.task_id,
                num_examples=100 + index,
                manifest=manifest_for_arrays(update),
                metrics={"loss": float(rng.random())},
            )
            started = time.monotonic()
            await push(stub, metadata, header, update)
            stats.upload_s.append(time.monotonic() - started)
        except grpc.aio.AioRpcError as err:
            record_error(stats, "train", err)
            await asyncio.sleep(0.5)
    await beats


async def admin_probe(
    admin: admin_pb2_grpc.AdminStub, experiment_id: str, stats: Stats, pid: int, stop: asyncio.Event
) -> None:
    metadata = [("authorization", f"Bearer {ADMIN_TOKEN}")]
    while not stop.is_set():
        for call in (
            lambda: admin.GetStatus(admin_pb2.GetStatusRequest(), metadata=metadata, timeout=30),
            lambda: admin.ListRounds(
                admin_pb2.ListRoundsRequest(experiment_id=experiment_id), metadata=metadata, timeout=30
            ),
        ):
            started = time.monotonic()
            try:
                await call()  # type: ignore[no-untyped-call]
                stats.admin_s.append(time.monotonic() - started)
            except grpc.aio.AioRpcError as err:
                record_error(stats, "admin", err)
        stats.samples.append(proc_sample(pid))
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass


async def run(args: argparse.Namespace, target: str, pid: int, sites: dict[str, str]) -> dict[str, Any]:
    stats = Stats()
    stop = asyncio.Event()
    options = [("grpc.max_send_message_length", 32 << 20), ("grpc.max_receive_message_length", 32 << 20)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(CHANNELS)]
    stubs = [worker_pb2_grpc.WorkerStub(c) for c in channels]  # type: ignore[no-untyped-call]
    admin = admin_pb2_grpc.AdminStub(channels[0])  # type: ignore[no-untyped-call]
    metadata = [("authorization", f"Bearer {ADMIN_TOKEN}")]
    idle = [s for s in sites if s.startswith("idle-")]
    train = [s for s in sites if s.startswith("train-")]
    registered = asyncio.Semaphore(32)
    started = time.monotonic()
    tasks = [
        asyncio.create_task(idle_site(stubs[i % CHANNELS], s, sites[s], args, stats, stop, registered))
        for i, s in enumerate(idle)
    ]
    while True:  # wait until the idle sites are connected
        status = await admin.GetStatus(admin_pb2.GetStatusRequest(), metadata=metadata, timeout=30)
        if status.workers_online >= len(idle) or time.monotonic() - started > args.timeout / 2:
            break
        await asyncio.sleep(0.5)
    connect_s = time.monotonic() - started
    print(f"{status.workers_online} idle sites connected in {connect_s:.1f} s", flush=True)
    stats.heartbeat_s.clear()  # measure under steady load, not during the connection storm
    tasks += [
        asyncio.create_task(training_site(stubs[i % CHANNELS], s, sites[s], i, args, stats, stop))
        for i, s in enumerate(train)
    ]
    experiment = await admin.SubmitExperiment(
        admin_pb2.SubmitExperimentRequest(
            spec_yaml=synthetic_spec_yaml("capacity-bench", train, args.rounds, 600), start=True
        ),
        metadata=metadata,
        timeout=30,
    )
    probe = asyncio.create_task(admin_probe(admin, experiment.experiment_id, stats, pid, stop))
    rounds: list[admin_pb2.RoundInfo] = []
    experiment_started = time.monotonic()
    while time.monotonic() - started < args.timeout:
        reply = await admin.ListRounds(
            admin_pb2.ListRoundsRequest(experiment_id=experiment.experiment_id), metadata=metadata, timeout=30
        )
        rounds = list(reply.rounds)
        done = [r for r in rounds if r.state in ("committed", "failed")]
        if len(done) >= args.rounds:
            break
        await asyncio.sleep(0.5)
    experiment_s = time.monotonic() - experiment_started
    stop.set()
    await asyncio.wait([*tasks, probe], timeout=60)
    for channel in channels:
        await channel.close()
    cpu = [s["cpu_s"] for s in stats.samples]
    round_times = [r.closed_unix - r.opened_unix for r in rounds if r.closed_unix]
    return {
        "idle_sites_connected": int(status.workers_online),
        "connect_seconds": round(connect_s, 2),
        "rounds_committed": sum(r.state == "committed" for r in rounds),
        "round_seconds": [round(t, 2) for t in round_times],
        "experiment_seconds": round(experiment_s, 2),
        "heartbeats": len(stats.heartbeat_s),
        "heartbeat_ms_p50": round(percentile(stats.heartbeat_s, 50) * 1000, 1),
        "heartbeat_ms_p99": round(percentile(stats.heartbeat_s, 99) * 1000, 1),
        "admin_calls": len(stats.admin_s),
        "admin_ms_p50": round(percentile(stats.admin_s, 50) * 1000, 1),
        "admin_ms_p99": round(percentile(stats.admin_s, 99) * 1000, 1),
        "download_s_median": round(statistics.median(stats.download_s), 3) if stats.download_s else None,
        "upload_s_median": round(statistics.median(stats.upload_s), 3) if stats.upload_s else None,
        "errors": dict(stats.errors),
        "coordinator_threads_max": max((s["threads"] for s in stats.samples), default=0),
        "coordinator_fds_max": max((s["fds"] for s in stats.samples), default=0),
        "coordinator_rss_mib_max": round(max((s["rss_mib"] for s in stats.samples), default=0), 1),
        "coordinator_cpu_seconds": round(cpu[-1] - cpu[0], 2) if len(cpu) > 1 else None,
        "coordinator_cpu_share": round(
            (cpu[-1] - cpu[0]) / (stats.samples[-1]["t"] - stats.samples[0]["t"]), 2
        )
        if len(cpu) > 1
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--idle-sites", type=int, default=1000)
    parser.add_argument("--train-sites", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--update-mib", type=float, default=1.0)
    parser.add_argument("--tensors", type=int, default=8)
    parser.add_argument("--train-seconds", type=float, default=2.0)
    parser.add_argument("--heartbeat-seconds", type=float, default=5.0)
    parser.add_argument("--pull-wait", type=float, default=30.0)
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="stop everything after this many seconds"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "capacity.json")
    args = parser.parse_args()
    sites = {f"idle-{i:04d}": f"token-idle-{i}" for i in range(args.idle_sites)}
    sites.update({f"train-{i}": f"token-train-{i}" for i in range(args.train_sites)})
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fedtune-capacity-") as tmp:
        work = Path(tmp)
        port = free_port()
        config = write_coordinator_config(
            work,
            port,
            sites,
            ADMIN_TOKEN,
            heartbeat_seconds=args.heartbeat_seconds,
            max_pull_wait_seconds=args.pull_wait,
            worker_offline_after_seconds=max(30.0, 6 * args.heartbeat_seconds),
        )
        with ProcessGroup(work / "logs") as group:
            coordinator = group.start("coordinator", ["coordinator", "serve", "--config", str(config)])
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            grpc.channel_ready_future(channel).result(timeout=60)
            channel.close()
            result = asyncio.run(run(args, f"127.0.0.1:{port}", coordinator.pid, sites))
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
