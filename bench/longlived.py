"""A long-lived federation on loopback: disk use over 30 rounds before and after garbage collection, and
the round time with one site killed and not restarted (docs/decisions.md 33, issue 14).

    python -m bench.longlived [--sites 8] [--rounds 30] [--update-mib 4] [--out bench/results/longlived.json]

An in-process coordinator (SQLite, a temporary data dir, default settings unless named below) and N
synthetic sites, one thread each, written against the generated stubs: register, heartbeat every
`heartbeat_seconds`, long-poll PullTask, "train" for `--train-seconds` (sleep) and push a random
float32 update of `--update-mib` MiB. Part 1 runs `--rounds` rounds with every site, reads
GetStorageUsage and the data dir's size, then runs CollectGarbage with the default retention policy
(keep_last 5; grace 0, as no commit is in flight once the run is over) and reads them again. Part 2
runs 3 rounds with every site, then one round in which one site takes its task and dies (no more
calls), with the default `worker_offline_after_seconds`; round times come from ListRounds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from coordinator.server import start_server
from coordinator.settings import CoordinatorSettings
from fedtune.serde import UpdateHeaderRecord, task_from_proto, update_header_to_proto
from fedtune.tensorstream.encoder import iter_chunks_from_arrays, manifest_for_arrays
from fedtune.tensorstream.serde import chunk_to_proto
from fedtune.v1 import admin_pb2, admin_pb2_grpc, worker_pb2, worker_pb2_grpc

ADMIN_TOKEN = "bench-admin"
CHUNK_BYTES = 1 << 20
SPEC = """
name: longlived-{tag}
base_model: {{name: synthetic}}
task: causal-lm
seed: 1
stages:
  - kind: finetune
    rounds: {rounds}
    deadline_seconds: 3600
    strategy: {{name: fedavg}}
    selection: {{min_sites: {min_sites}}}
"""


class Site(threading.Thread):
    """One synthetic site: heartbeats, pulls, trains (sleeps), pushes; `kill_in_round` = die there."""

    def __init__(self, target: str, name: str, args: argparse.Namespace, heartbeat_s: float) -> None:
        super().__init__(daemon=True, name=f"site-{name}")
        self.name_, self.args, self.heartbeat_s = name, args, heartbeat_s
        self.channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", 64 << 20),
                ("grpc.max_receive_message_length", 64 << 20),
            ],
        )
        self.stub = worker_pb2_grpc.WorkerStub(self.channel)  # type: ignore[no-untyped-call]
        self.metadata = [("x-fedtune-site", name), ("authorization", f"Bearer token-{name}")]
        self.stop = threading.Event()
        self.kill_in: tuple[str, int] | None = None  # (experiment name, round): take the task, then die
        self.task_id = ""
        self.rng = np.random.default_rng(abs(hash(name)) % 2**32)
        response = self.stub.Register(
            worker_pb2.RegisterRequest(site=name, token=f"token-{name}"), timeout=10
        )
        self.worker_id = response.worker_id

    def run(self) -> None:
        beat = threading.Thread(target=self._beat, daemon=True)
        beat.start()
        while not self.stop.is_set():
            try:
                response = self.stub.PullTask(
                    worker_pb2.PullTaskRequest(worker_id=self.worker_id, wait_seconds=1.0),
                    metadata=self.metadata,
                    timeout=15,
                )
                if response.has_task:
                    self._work(response.task)
            except grpc.RpcError:
                time.sleep(0.2)

    def _beat(self) -> None:
        while not self.stop.wait(self.heartbeat_s):
            request = worker_pb2.HeartbeatRequest(worker_id=self.worker_id, task_id=self.task_id)
            try:
                self.stub.Heartbeat(request, metadata=self.metadata, timeout=10)
            except grpc.RpcError:
                pass

    def _work(self, task: worker_pb2.Task) -> None:
        record = task_from_proto(task)
        spec = json.loads(record.spec_json)
        if self.kill_in == (spec["name"], record.round):
            self.stop.set()  # killed with its task leased: no heartbeat, no push, never back
            return
        self.task_id = task.task_id
        files: dict[str, bytes] = {}
        if record.kind == "init":
            size = int(self.args.update_mib * (1 << 20)) // 4
            arrays = {"lora.weight": np.zeros(size, np.float32)}
            files = {"adapter_config.json": b'{"peft_type": "LORA", "r": 8}'}
        else:
            time.sleep(self.args.train_seconds)
            assert record.model_manifest is not None
            arrays = {
                t.name: self.rng.standard_normal(t.shape).astype(np.float32)
                for t in record.model_manifest.tensors
            }
        manifest = manifest_for_arrays(arrays)
        header = UpdateHeaderRecord(task.task_id, 10, manifest, {"loss": 1.0}, files, False)

        def requests() -> Iterator[worker_pb2.PushUpdateRequest]:
            yield worker_pb2.PushUpdateRequest(header=update_header_to_proto(header))
            for chunk in iter_chunks_from_arrays(arrays, manifest, CHUNK_BYTES):
                yield worker_pb2.PushUpdateRequest(chunk=chunk_to_proto(chunk))

        try:
            self.stub.PushUpdate(requests(), metadata=self.metadata, timeout=120)
        except grpc.RpcError:
            pass
        self.task_id = ""


def wait_rounds(
    admin: Any, md: list[tuple[str, str]], experiment_id: str, count: int, timeout: float
) -> list[Any]:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        rounds = admin.ListRounds(
            admin_pb2.ListRoundsRequest(experiment_id=experiment_id), metadata=md
        ).rounds
        if any(r.state == "failed" for r in rounds):
            raise RuntimeError(f"a round failed: {[r.reason for r in rounds]}")
        if sum(r.state == "committed" for r in rounds) >= count:
            return list(rounds)
        time.sleep(0.2)
    raise TimeoutError(f"{count} rounds did not commit in {timeout} s")


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def usage_dict(usage: admin_pb2.StorageUsage, data_dir: Path) -> dict[str, Any]:
    return {
        "blob_bytes": usage.blob_bytes,
        "blob_count": usage.blob_count,
        "spool_bytes": usage.spool_bytes,
        "data_dir_bytes": dir_bytes(data_dir),
        "versions_to_prune": usage.versions_to_prune,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--update-mib", type=float, default=4.0)
    parser.add_argument("--train-seconds", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/longlived.json"))
    args = parser.parse_args()
    names = [f"site{i}" for i in range(args.sites)]
    with tempfile.TemporaryDirectory(prefix="fedtune-longlived-") as tmp:
        data_dir = Path(tmp) / "data"
        settings = CoordinatorSettings.load(
            host="127.0.0.1",
            port=0,
            data_dir=data_dir,
            admin_token=ADMIN_TOKEN,
            sites=",".join(f"{n}:token-{n}" for n in names),
            gc_grace_seconds=0,  # the collection runs after the run, when no commit is in flight
        )
        server = start_server(settings)
        target = f"127.0.0.1:{server.port}"
        admin = admin_pb2_grpc.AdminStub(grpc.insecure_channel(target))  # type: ignore[no-untyped-call]
        md = [("authorization", f"Bearer {ADMIN_TOKEN}")]
        sites = [Site(target, n, args, settings.heartbeat_seconds) for n in names]
        for site in sites:
            site.start()
        result: dict[str, Any] = {
            "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()}, {platform.python_version()}",
            "sites": args.sites, "rounds": args.rounds, "update_mib": args.update_mib,
            "train_seconds": args.train_seconds,
            "settings": {k: getattr(settings, k) for k in (
                "retention_keep_last", "gc_interval_seconds", "gc_grace_seconds",
                "worker_offline_after_seconds", "heartbeat_seconds", "task_lease_seconds")},
        }  # fmt: skip
        # Part 1: disk use of a long run, before and after a collection with the default policy
        started = time.monotonic()
        spec = SPEC.format(tag="disk", rounds=args.rounds, min_sites=args.sites)
        exp = admin.SubmitExperiment(
            admin_pb2.SubmitExperimentRequest(spec_yaml=spec, start=True), metadata=md
        )
        rounds = wait_rounds(admin, md, exp.experiment_id, args.rounds, timeout=60 * args.rounds)
        result["disk_run_seconds"] = round(time.monotonic() - started, 1)
        result["round_seconds_all_sites_disk_run"] = round(
            float(np.median([r.closed_unix - r.opened_unix for r in rounds])), 2
        )
        before = admin.GetStorageUsage(admin_pb2.GetStorageUsageRequest(), metadata=md)
        result["disk_before_gc"] = usage_dict(before, data_dir)
        report = admin.CollectGarbage(admin_pb2.CollectGarbageRequest(), metadata=md)
        result["gc"] = {
            "versions_pruned": report.versions_pruned, "blobs_deleted": report.blobs_deleted,
            "blob_bytes_freed": report.blob_bytes_freed, "seconds": round(report.seconds, 3),
        }  # fmt: skip
        after = admin.GetStorageUsage(admin_pb2.GetStorageUsageRequest(), metadata=md)
        result["disk_after_gc"] = usage_dict(after, data_dir)
        # Part 2: round time with every site, then with one site killed (not restarted)
        spec = SPEC.format(tag="kill", rounds=4, min_sites=args.sites - 1)
        sites[-1].kill_in = ("longlived-kill", 4)
        exp = admin.SubmitExperiment(
            admin_pb2.SubmitExperimentRequest(spec_yaml=spec, start=True), metadata=md
        )
        rounds = wait_rounds(admin, md, exp.experiment_id, 4, timeout=600)
        times = [round(r.closed_unix - r.opened_unix, 2) for r in rounds]
        result["kill"] = {
            "min_sites": args.sites - 1,
            "round_seconds_all_sites": times[:3],
            "round_seconds_one_site_killed": times[3],
            "updates_in_killed_round": rounds[3].updates_received,
            "deadline_seconds": 3600,
        }
        for site in sites:
            site.stop.set()
        server.stop(1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
