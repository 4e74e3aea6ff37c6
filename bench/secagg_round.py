"""Secure aggregation's cost in a real round: the same synthetic round with and without it.

    python bench/secagg_round.py [--sites 8,32] [--mib 1.3,64] [--dropouts 0,1,quarter]
                                 [--out bench/results/secagg-round.json]

For each (sites N, update size, dropouts) it starts a real coordinator (`fedtune coordinator serve`,
SQLite, loopback) as a child process and N scripted sites as threads of this process (blocking gRPC,
one channel each). A site registers, heartbeats every second, pulls its tasks, answers the secure-
aggregation steps with the kernel the worker daemon runs (fedtune/secagg/site.py), and uploads a
synthetic float32 update (masked when secure aggregation is on). "Dropouts" sites die after dealing
their shares (they stop heartbeating and never upload): the round goes on once the coordinator marks
them offline (`worker_offline_after_seconds`, 15 s here) and unmasks them from their neighbours'
shares. At most `--parallel` sites mask/encode at once (memory). Reported per run: the round time
(opened -> committed), the bytes a site sent and received (uploads, secure-aggregation messages, task
payloads; downloads of the model are the same with and without and are not included), and the
coordinator's CPU seconds and peak RSS (from /proc), with the machine's load average before/after.
Writes bench/results/secagg-round.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from bench.synthetic_run import proc_sample, synthetic_spec_yaml, write_coordinator_config  # noqa: E402
from demo.processes import ProcessGroup, free_port  # noqa: E402
from fedtune.secagg.site import MASKED_TENSOR, SiteRound  # noqa: E402
from fedtune.secagg.wire import keys_to_proto, revealed_to_proto  # noqa: E402
from fedtune.serde import TaskRecord, UpdateHeaderRecord, task_from_proto, update_header_to_proto  # noqa: E402
from fedtune.spec import load_spec_json  # noqa: E402
from fedtune.tensorstream.encoder import iter_chunks_from_arrays, manifest_for_arrays  # noqa: E402
from fedtune.tensorstream.serde import chunk_to_proto  # noqa: E402
from fedtune.v1 import admin_pb2, admin_pb2_grpc, worker_pb2, worker_pb2_grpc  # noqa: E402

ADMIN_TOKEN = "bench-admin"
CHUNK_BYTES = 1 << 20
# Sites are threads of one process: a site busy masking can starve the others' heartbeats (GIL), so the
# coordinator is told to wait this long before it calls a silent site offline (and drops its task).
OFFLINE_AFTER_SECONDS = 15.0
TENSOR_ELEMENTS = 1 << 20  # the synthetic update: float32 tensors of at most 4 MiB


def synthetic(total_elements: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays, left, index = {}, total_elements, 0
    while left > 0:
        size = min(TENSOR_ELEMENTS, left)
        arrays[f"layer.{index:03d}.lora.weight"] = (rng.standard_normal(size) * 0.05).astype(np.float32)
        left, index = left - size, index + 1
    return arrays


class Site(threading.Thread):
    def __init__(
        self,
        target: str,
        name: str,
        token: str,
        seed: int,
        elements: int,
        dies: bool,
        heavy: threading.Semaphore,
        state_dir: Path,
        stop: threading.Event,
    ) -> None:
        super().__init__(daemon=True, name=name)
        self.site, self.token, self.seed, self.elements, self.dies = name, token, seed, elements, dies
        self.heavy, self.state_dir, self.stop = heavy, state_dir, stop
        options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
        self.channel = grpc.insecure_channel(target, options=options)
        self.stub = worker_pb2_grpc.WorkerStub(self.channel)  # type: ignore[no-untyped-call]
        self.metadata = [("x-fedtune-site", name), ("authorization", f"Bearer {token}")]
        self.sent = self.received = 0
        self.error = ""
        self.dead = threading.Event()
        self.worker_id = ""

    def run(self) -> None:
        try:
            self.worker_id = self.stub.Register(
                worker_pb2.RegisterRequest(site=self.site, token=self.token, worker_version="bench"),
                timeout=30,
            ).worker_id
            threading.Thread(target=self._heartbeats, daemon=True).start()
            while not self.stop.is_set() and not self.dead.is_set():
                reply = self.stub.PullTask(
                    worker_pb2.PullTaskRequest(worker_id=self.worker_id, wait_seconds=1.0),
                    metadata=self.metadata,
                    timeout=30,
                )
                if reply.has_task:
                    self.received += reply.task.ByteSize()
                    self._handle(task_from_proto(reply.task))
        except Exception as err:  # noqa: BLE001 - reported in the results
            if not self.stop.is_set():
                self.error = f"{type(err).__name__}: {err}"[:300]

    def _heartbeats(self) -> None:
        while not self.stop.wait(1.0) and not self.dead.is_set():
            try:
                self.stub.Heartbeat(
                    worker_pb2.HeartbeatRequest(worker_id=self.worker_id), metadata=self.metadata, timeout=10
                )
            except grpc.RpcError:
                pass

    def _submit(self, request: worker_pb2.SubmitSecAggRequest) -> None:
        self.sent += request.ByteSize()
        self.stub.SubmitSecAgg(request, metadata=self.metadata, timeout=60)

    def _handle(self, task: TaskRecord) -> None:
        if task.kind == "init":
            self._push(
                task, synthetic(self.elements, 0), 0, {"adapter_config.json": b'{"peft_type": "LORA"}'}
            )
            return
        secagg = task.secagg
        site_round = SiteRound(self.state_dir / f"{self.site}.json") if secagg is not None else None
        request = worker_pb2.SubmitSecAggRequest(task_id=task.task_id)
        if task.kind == "secagg_advertise":
            assert site_round is not None and secagg is not None
            request.keys.CopyFrom(keys_to_proto(secagg.site_index, site_round.advertise()))
            self._submit(request)
            return
        setup = (
            secagg.setup(load_spec_json(task.spec_json), task.experiment_id) if secagg is not None else None
        )
        if task.kind == "secagg_share":
            assert site_round is not None and secagg is not None and setup is not None
            request.boxes.update(site_round.deal(setup, secagg.site_index, secagg.sites, secagg.graph_seed))
            self._submit(request)
            return
        if task.kind == "secagg_unmask":
            assert site_round is not None and secagg is not None and setup is not None
            shares = site_round.reveal(
                setup,
                secagg.site_index,
                secagg.sites,
                secagg.graph_seed,
                secagg.boxes,
                secagg.survivors,
                secagg.dropped,
            )
            request.shares.extend(revealed_to_proto(shares))
            self._submit(request)
            return
        assert task.kind == "train", task.kind
        if self.dies:  # dies after dealing its shares, before uploading
            self.dead.set()
            return
        num_examples = 50 + self.seed
        with self.heavy:
            arrays = synthetic(self.elements, self.seed + 1)
            if site_round is not None and secagg is not None and setup is not None:
                masked = site_round.mask(
                    setup, secagg.site_index, secagg.sites, secagg.graph_seed, arrays, float(num_examples)
                )
                arrays = {MASKED_TENSOR: masked}
            self._push(task, arrays, num_examples, {})

    def _push(
        self, task: TaskRecord, arrays: dict[str, np.ndarray], num_examples: int, files: dict[str, bytes]
    ) -> None:
        manifest = manifest_for_arrays(arrays)
        header = UpdateHeaderRecord(
            task_id=task.task_id, num_examples=num_examples, manifest=manifest, files=files
        )

        def requests() -> Any:
            first = worker_pb2.PushUpdateRequest(header=update_header_to_proto(header))
            self.sent += first.ByteSize()
            yield first
            for chunk in iter_chunks_from_arrays(arrays, manifest, CHUNK_BYTES):
                message = worker_pb2.PushUpdateRequest(chunk=chunk_to_proto(chunk))
                self.sent += message.ByteSize()
                yield message

        self.stub.PushUpdate(requests(), metadata=self.metadata, timeout=600)

    def close(self) -> None:
        self.channel.close()


def spec_yaml(sites: list[str], secure: bool, max_weight: float) -> str:
    privacy = {"secure_aggregation": True, "secagg": {"clip_range": 1.0, "max_weight": max_weight}}
    return synthetic_spec_yaml(
        "secagg-bench", sites, 1, 1800, min_sites=3, privacy=privacy if secure else None
    )


def run_one(
    sites_n: int, mib: float, secure: bool, dropouts: int, parallel: int, timeout: float
) -> dict[str, Any]:
    elements = int(mib * (1 << 20) / 4)
    names = {f"site-{i:02d}": f"token-{i}" for i in range(sites_n)}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fedtune-secagg-bench-") as tmp:
        work = Path(tmp)
        port = free_port()
        config = write_coordinator_config(
            work,
            port,
            names,
            ADMIN_TOKEN,
            heartbeat_seconds=1.0,
            worker_offline_after_seconds=OFFLINE_AFTER_SECONDS,
            max_pull_wait_seconds=1.0,
            scheduler_tick_seconds=0.2,
            max_update_bytes=1 << 34,
        )
        with ProcessGroup(work / "logs") as group:
            coordinator = group.start("coordinator", ["coordinator", "serve", "--config", str(config)])
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            grpc.channel_ready_future(channel).result(timeout=60)
            admin = admin_pb2_grpc.AdminStub(channel)  # type: ignore[no-untyped-call]
            metadata = [("authorization", f"Bearer {ADMIN_TOKEN}")]
            stop, heavy = threading.Event(), threading.Semaphore(parallel)
            dying = set(list(names)[1 : 1 + dropouts])  # never the first site (it builds version 0)
            threads = [
                Site(
                    f"127.0.0.1:{port}",
                    name,
                    token,
                    seed,
                    elements,
                    name in dying,
                    heavy,
                    work / "state",
                    stop,
                )
                for seed, (name, token) in enumerate(names.items())
            ]
            for thread in threads:
                thread.start()
            connected = time.monotonic()
            while time.monotonic() - connected < 120:  # every site selected: all registered first
                status = admin.GetStatus(admin_pb2.GetStatusRequest(), metadata=metadata, timeout=30)
                if status.workers_online >= sites_n:
                    break
                time.sleep(0.2)
            cpu0, rss_max = proc_sample(coordinator.pid)["cpu_s"], 0.0
            experiment = admin.SubmitExperiment(
                admin_pb2.SubmitExperimentRequest(
                    spec_yaml=spec_yaml(list(names), secure, 100.0), start=True
                ),
                metadata=metadata,
                timeout=30,
            )
            started, info = time.monotonic(), None
            while time.monotonic() - started < timeout:
                group.check_alive()
                rss_max = max(rss_max, proc_sample(coordinator.pid)["rss_mib"])
                rounds = admin.ListRounds(
                    admin_pb2.ListRoundsRequest(experiment_id=experiment.experiment_id),
                    metadata=metadata,
                    timeout=30,
                ).rounds
                if rounds and rounds[-1].state in ("committed", "failed"):
                    info = rounds[-1]
                    break
                time.sleep(0.2)
            cpu = proc_sample(coordinator.pid)["cpu_s"] - cpu0
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
                thread.close()
            channel.close()
    alive = [t for t in threads if t.site not in dying]
    return {
        "sites": sites_n,
        "update_mib": mib,
        "secure_aggregation": secure,
        "dropouts": dropouts,
        "state": info.state if info is not None else "timeout",
        "reason": info.reason if info is not None else "",
        "round_seconds": round(info.closed_unix - info.opened_unix, 2)
        if info is not None and info.closed_unix
        else None,
        "updates_received": info.updates_received if info is not None else 0,
        "bytes_sent_per_site": int(np.median([t.sent for t in alive if t.site != "site-00"] or [0])),
        "bytes_received_per_site": int(np.median([t.received for t in alive] or [0])),
        "coordinator_cpu_seconds": round(cpu, 2),
        "coordinator_rss_mib_max": round(rss_max, 1),
        "site_errors": {t.site: t.error for t in threads if t.error},
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


NOTE = " ".join(
    [
        "Shared with other jobs (see loadavg in the JSON): indicative, noisy.",
        "Sites are threads of one process on the same machine,",
        "so the site-side masking CPU competes with the coordinator.",
        f"Dropouts die after sharing; the round waits ~{OFFLINE_AFTER_SECONDS:g} s to mark them offline",
        "(worker_offline_after_seconds), part of the round time.",
    ]
)


def write_markdown(path: Path, result: dict[str, Any]) -> None:
    lines = [
        "# Secure aggregation: round overhead (bench/secagg_round.py)",
        "",
        f"{result['date']}, {result['machine']['cpus']} CPUs. {NOTE}",
        "",
        "| sites | update MiB | secagg | dropouts | state | round s | bytes sent / site | bytes recv / site "
        "(tasks) | coord CPU s | coord RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        secure = "yes" if r["secure_aggregation"] else "no"
        lines.append(
            f"| {r['sites']} | {r['update_mib']} | {secure} | {r['dropouts']} | {r['state']} | "
            f"{r['round_seconds']} | {r['bytes_sent_per_site']:,} | {r['bytes_received_per_site']:,} | "
            f"{r['coordinator_cpu_seconds']} | {r['coordinator_rss_mib_max']} |"
        )
    lines += ["", "Commands (each adds or replaces its configurations):", ""]
    lines += [f"- `{command}`" for command in result["commands"]] + [""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", default="8,32")
    parser.add_argument("--mib", default="1.3,64")
    parser.add_argument(
        "--dropouts",
        default="plain,0,1,quarter",
        help="runs: 'plain' (no secure aggregation), then dropout counts with it ('quarter': floor(n/4))",
    )
    parser.add_argument("--parallel", type=int, default=2, help="sites encoding/uploading at once")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "secagg-round.json")
    args = parser.parse_args()
    runs: list[dict[str, Any]] = []
    commands: list[str] = []
    if args.out.is_file():  # keep earlier configurations measured by other invocations
        earlier = json.loads(args.out.read_text())
        runs = list(earlier.get("runs", []))
        commands = list(earlier.get("commands", [earlier["command"]] if "command" in earlier else []))
    for sites_n in [int(s) for s in args.sites.split(",")]:
        for mib in [float(m) for m in args.mib.split(",")]:
            items = args.dropouts.split(",")
            drops = sorted(
                {math.floor(sites_n / 4) if d == "quarter" else int(d) for d in items if d != "plain"}
            )
            plans = [(False, 0)] * ("plain" in items) + [(True, d) for d in drops]
            for secure, dropouts in plans:
                print(f"n={sites_n} {mib} MiB secagg={secure} dropouts={dropouts} ...", flush=True)
                result = run_one(sites_n, mib, secure, dropouts, args.parallel, args.timeout)
                print(json.dumps(result), flush=True)
                key = (sites_n, mib, secure, dropouts)
                runs = [
                    r
                    for r in runs
                    if (r["sites"], r["update_mib"], r["secure_aggregation"], r["dropouts"]) != key
                ]
                runs.append(result)
    runs.sort(key=lambda r: (r["sites"], r["update_mib"], r["secure_aggregation"], r["dropouts"]))
    result = {
        "benchmark": "secagg_round",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "commands": [*commands, "python " + " ".join(sys.argv)],
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(args.out.with_suffix(".md"), result)


if __name__ == "__main__":
    main()
