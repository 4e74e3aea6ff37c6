"""Big updates: a real coordinator and N site processes exchanging large float32 updates, per phase.

    flock /tmp/fedtune-heavy.lock python bench/big_updates.py [--sites 8] [--tensors 8] [--tensor-mib 32]
        [--rounds 3] [--measure 2,3] [--out bench/results/big-updates.json] [--label after]

Starts `fedtune coordinator serve` (SQLite, loopback, metrics endpoint on) and N site processes
(this script with `--site`), each a real worker transfer stack: `worker.connection.Connection`,
`pull_task`, `worker.downloads.fetch_version` (StreamDecoder: crc32, finite check, sha256, fsync'd
partial) and `worker.uploads.push_update`. Sites do not train: an update is a fixed random float32
array per site (default 8 tensors x 32 MiB = 256 MiB), made once, so a round is lease, download,
upload. Round 1 warms up; the rounds in `--measure` are reported:

- lease: from the round opening (ListRounds `opened_unix`) until the last site holds its task;
- download: all sites' bytes / (last download end - first download start), MB/s total;
- upload+verify: all sites' bytes / (last PushUpdate answer - first PushUpdate start), MB/s total
  ingest; a PushUpdate answers after the coordinator verified the sha256 AND folded the update, so
  this includes the fold;
- fold: `fedtune_fold_seconds` (the strategy weighing and folding each update) from the metrics
  endpoint, as GB/s of update bytes, next to a numpy memcpy of the same bytes in this process;
- commit: `fedtune_commit_seconds` (finish_round, the version's blobs, the SQL transaction);
- round: `closed_unix - opened_unix`; coordinator CPU seconds and peak RSS from /proc.

The machine is shared, so figures are noisy: the load average before and after is recorded. HEAVY
(about 2 x N x update size of RAM plus page cache): run it under `flock /tmp/fedtune-heavy.lock`.
Writes `--out` (JSON) and the same name with `.md` (a table; an existing "before" column is kept).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# `python bench/big_updates.py` puts bench/ first on the path, where the modules of the bench package
# would shadow top-level ones: put the repository root there instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from bench.synthetic_run import proc_sample, synthetic_spec_yaml, write_coordinator_config  # noqa: E402

ADMIN_TOKEN = "bench-admin"
MB = 1e6


# ------------------------------------------------------------------------------------------- sites
def site_main(args: argparse.Namespace) -> None:
    """One site: register, heartbeat, then take tasks until killed; one JSON line per task to stdout."""
    from fedtune.lifetime import end_with_parent_from_env
    from fedtune.tensorstream.manifest import Manifest
    from worker.connection import Connection
    from worker.downloads import fetch_version
    from worker.settings import WorkerSettings
    from worker.task_io import TaskOutput
    from worker.uploads import push_update

    end_with_parent_from_env()
    work = Path(args.site_dir)
    work.mkdir(parents=True, exist_ok=True)
    settings = WorkerSettings.model_validate(
        {
            "coordinator": args.target,
            "site": args.site,
            "token": args.token,
            "data_root": work,
            "model_root": work,
        }
    )
    connection = Connection(settings)
    connection.register({"kind": "bench"}, {}, "bench")
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(connection.heartbeat_seconds):
            try:
                connection.heartbeat()
            except Exception:  # noqa: BLE001 - a missed beat is reported by the coordinator, not here
                pass

    threading.Thread(target=beat, daemon=True).start()
    rng = np.random.default_rng(args.index + 1)
    numel = args.tensor_mib * (1 << 20) // 4
    arrays = {
        f"layer.{i}.lora_A.weight": rng.standard_normal(numel, dtype=np.float32) for i in range(args.tensors)
    }
    print(json.dumps({"ready": True}), flush=True)
    while True:
        task = connection.pull_task(5.0)
        if task is None:
            continue
        leased = time.time()
        record: dict[str, Any] = {
            "site": args.site,
            "task": task.task_id,
            "kind": task.kind,
            "leased": leased,
        }
        if task.kind == "init":
            output = TaskOutput(arrays, 0, {}, {"adapter_config.json": b'{"peft_type": "LORA", "r": 4}'})
        else:
            manifest = task.model_manifest or Manifest(())
            record["download_start"] = time.time()
            path = fetch_version(connection, task.model_version_id, manifest, work / "downloads")
            record["download_end"] = time.time()
            record["download_bytes"] = path.stat().st_size
            path.unlink()  # the next round downloads afresh, as a site whose cache holds the old version
            arrays[next(iter(arrays))][0] = float(task.round)  # a different update each round
            output = TaskOutput(arrays, 100 + args.index, {"loss": 1.0 / (1 + args.index)})
        record["upload_start"] = time.time()
        answer = push_update(connection, task.task_id, output)
        record["upload_end"] = time.time()
        record["upload_bytes"] = int(answer.received_bytes)
        record["round"] = getattr(task, "round", 0)
        print(json.dumps(record), flush=True)


# ------------------------------------------------------------------------------------- coordinator
def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    wanted = (
        "fedtune_fold_seconds_sum",
        "fedtune_fold_seconds_count",
        "fedtune_commit_seconds_sum",
        "fedtune_commit_seconds_count",
    )
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            values[name] = float(value)
    return values


def time_memcpy(nbytes: int, copies: int, repeats: int = 3) -> float:
    source = np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8)
    target = np.empty_like(source)
    np.copyto(target, source)  # first touch
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(copies):
            np.copyto(target, source)
        best = min(best, time.perf_counter() - started)
    return best


class Coordinator:
    def __init__(self, work: Path, sites: dict[str, str], chunk_bytes: int = 0) -> None:
        from demo.processes import free_port

        self.port, self.metrics_port = free_port(), free_port()
        config = write_coordinator_config(
            work,
            self.port,
            sites,
            ADMIN_TOKEN,
            metrics_port=self.metrics_port,
            task_lease_seconds=1800,
            **({"chunk_bytes": chunk_bytes} if chunk_bytes else {}),
        )
        self.log = (work / "coordinator.log").open("wb")
        self.process = start_child(
            [sys.executable, "-m", "fedtune", "coordinator", "serve", "--config", str(config)], self.log
        )


def start_child(argv: list[str], stdout: Any) -> subprocess.Popen[bytes]:
    from fedtune.lifetime import child_env

    env = child_env({**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
    return subprocess.Popen(argv, stdout=stdout, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import grpc

    from fedtune.v1 import admin_pb2, admin_pb2_grpc

    sites = {f"site-{i}": f"token-site-{i}" for i in range(args.sites)}
    coordinator = Coordinator(work, sites, args.chunk_bytes)
    children: list[subprocess.Popen[bytes]] = [coordinator.process]
    samples: list[dict[str, float]] = []
    stop = threading.Event()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{coordinator.port}")
        grpc.channel_ready_future(channel).result(timeout=120)
        admin = admin_pb2_grpc.AdminStub(channel)  # type: ignore[no-untyped-call]
        metadata = [("authorization", f"Bearer {ADMIN_TOKEN}")]
        site_logs = []
        for index, (site, token) in enumerate(sites.items()):
            out = (work / f"{site}.jsonl").open("wb")
            site_logs.append(work / f"{site}.jsonl")
            argv = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--site",
                site,
                "--token",
                token,
                "--target",
                f"127.0.0.1:{coordinator.port}",
                "--index",
                str(index),
                "--site-dir",
                str(work / site),
                "--tensors",
                str(args.tensors),
                "--tensor-mib",
                str(args.tensor_mib),
                "--chunk-bytes",
                str(args.chunk_bytes),
            ]
            children.append(start_child(argv, out))
        deadline = time.time() + 300
        while sum(p.read_text().count('"ready"') for p in site_logs if p.exists()) < args.sites:
            if time.time() > deadline:
                raise RuntimeError("the sites did not start within 300 s; see " + str(work))
            time.sleep(0.5)

        def sample() -> None:
            while not stop.wait(0.25):
                try:
                    samples.append(proc_sample(coordinator.process.pid))
                except (OSError, KeyError, IndexError):
                    return

        threading.Thread(target=sample, daemon=True).start()
        experiment = admin.SubmitExperiment(
            admin_pb2.SubmitExperimentRequest(
                spec_yaml=synthetic_spec_yaml("big-updates-bench", list(sites), args.rounds, 1800), start=True
            ),
            metadata=metadata,
            timeout=60,
        )
        scrapes: dict[int, dict[str, float]] = {0: scrape(coordinator.metrics_port)}
        rounds: dict[int, Any] = {}
        deadline = time.time() + args.timeout
        while len(rounds) < args.rounds and time.time() < deadline:
            reply = admin.ListRounds(
                admin_pb2.ListRoundsRequest(experiment_id=experiment.experiment_id),
                metadata=metadata,
                timeout=60,
            )
            for info in reply.rounds:
                if info.state == "failed":
                    raise RuntimeError(f"round {info.round} failed: {info}")
                if info.state == "committed" and info.round not in rounds:
                    rounds[info.round] = info
                    scrapes[info.round] = scrape(coordinator.metrics_port)
            time.sleep(0.1)
        if len(rounds) < args.rounds:
            raise RuntimeError(f"only {len(rounds)} of {args.rounds} rounds committed in {args.timeout} s")
        stop.set()
        records = [
            json.loads(line)
            for path in site_logs
            for line in path.read_text().splitlines()
            if line.startswith("{") and '"ready"' not in line
        ]
    finally:
        stop.set()
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in reversed(children):
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
    update_bytes = args.tensors * args.tensor_mib * (1 << 20)
    memcpy_s = time_memcpy(update_bytes, args.sites)
    measured = []
    for number in args.measure:
        info = rounds[number]
        tasks = [r for r in records if r.get("round") == number and r["kind"] != "init"]
        previous = scrapes[max(k for k in scrapes if k < number)]
        now = scrapes[number]
        fold_s = now["fedtune_fold_seconds_sum"] - previous["fedtune_fold_seconds_sum"]
        folds = now["fedtune_fold_seconds_count"] - previous["fedtune_fold_seconds_count"]
        commit_s = now["fedtune_commit_seconds_sum"] - previous["fedtune_commit_seconds_sum"]
        inside = [s for s in samples if info.opened_unix <= s["t"] <= info.closed_unix + 0.3]
        down = sum(r["download_bytes"] for r in tasks)
        up = sum(r["upload_bytes"] for r in tasks)
        down_s = max(r["download_end"] for r in tasks) - min(r["download_start"] for r in tasks)
        up_s = max(r["upload_end"] for r in tasks) - min(r["upload_start"] for r in tasks)
        fold_rate = folds * update_bytes / fold_s / 1e9 if fold_s > 0 else None
        memcpy_rate = args.sites * update_bytes / memcpy_s / 1e9
        measured.append(
            {
                "round": number,
                "sites": len(tasks),
                "round_seconds": round(info.closed_unix - info.opened_unix, 2),
                "lease_seconds": round(max(r["leased"] for r in tasks) - info.opened_unix, 2),
                "download_seconds": round(down_s, 2),
                "download_mb_per_s_total": round(down / MB / down_s, 1),
                "upload_verify_seconds": round(up_s, 2),
                "upload_ingest_mb_per_s_total": round(up / MB / up_s, 1),
                "fold_seconds_total": round(fold_s, 3),
                "fold_gb_per_s": round(fold_rate, 2) if fold_rate else None,
                "memcpy_gb_per_s": round(memcpy_rate, 2),
                "fold_vs_memcpy": round(fold_rate / memcpy_rate, 3) if fold_rate else None,
                "commit_seconds": round(commit_s, 2),
                "coordinator_cpu_seconds": round(inside[-1]["cpu_s"] - inside[0]["cpu_s"], 2)
                if len(inside) > 1
                else None,
                "coordinator_rss_mib_max": round(max((s["rss_mib"] for s in inside), default=0), 1),
            }
        )
    return {
        "rounds": measured,
        "coordinator_rss_mib_peak": round(max((s["hwm_mib"] for s in samples), default=0), 1),
    }


# -------------------------------------------------------------------------------------------- report
ROWS = [
    ("round_seconds", "round (s)"),
    ("lease_seconds", "lease, round open to last task leased (s)"),
    ("download_seconds", "download (s)"),
    ("download_mb_per_s_total", "download, MB/s total"),
    ("upload_verify_seconds", "upload+verify+fold (s)"),
    ("upload_ingest_mb_per_s_total", "upload ingest, MB/s total"),
    ("fold_seconds_total", "fold, all updates (s)"),
    ("fold_gb_per_s", "fold, GB/s of update bytes"),
    ("fold_vs_memcpy", "fold / memcpy of the same bytes"),
    ("commit_seconds", "commit of the new version (s)"),
    ("coordinator_cpu_seconds", "coordinator CPU in the round (s)"),
    ("coordinator_rss_mib_max", "coordinator RSS max in the round (MiB)"),
]


def write_markdown(path: Path, runs: dict[str, dict[str, Any]]) -> None:
    labels = list(runs)
    lines = [
        "# Big updates: 8 sites x 256 MiB float32 updates over loopback gRPC",
        "",
        "Command: `flock /tmp/fedtune-heavy.lock python bench/big_updates.py --label LABEL` "
        "(median of the measured rounds per cell; per-round values in the JSON).",
        "The machine is shared (2 cores, other helpers' jobs running): figures are noisy; "
        "load averages below.",
        "",
        "| phase | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for key, title in ROWS:
        cells = []
        for label in labels:
            values = [r[key] for r in runs[label]["rounds"] if r.get(key) is not None]
            cells.append(f"{float(np.median(values)):g}" if values else "-")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines.append(
        "| coordinator peak RSS, whole run (MiB) | "
        + " | ".join(f"{runs[label]['coordinator_rss_mib_peak']:g}" for label in labels)
        + " |"
    )
    lines += ["", "| run | commit | date | load average before | after |", "|---|---|---|---|---|"]
    for label in labels:
        run = runs[label]
        lines.append(
            f"| {label} | {run.get('commit', '?')} | {run['date']} | {run['machine']['loadavg_before']} "
            f"| {run['machine']['loadavg_after']} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sites", type=int, default=8)
    parser.add_argument("--tensors", type=int, default=8)
    parser.add_argument("--tensor-mib", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--measure", default="2,3", help="rounds to report (comma separated)")
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--chunk-bytes", type=int, default=0, help="chunk size both ways (0: the defaults)")
    parser.add_argument("--label", default="after", help="column name in the results (before/after)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "big-updates.json")
    parser.add_argument("--workdir", type=Path, default=None)
    # site mode (the script starts itself once per site)
    parser.add_argument("--site", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--site-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.site:
        site_main(args)
        return
    args.measure = [int(x) for x in args.measure.split(",")]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fedtune-big-", dir=args.workdir) as tmp:
        result = run(args, Path(tmp))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit.stdout.strip() or "?",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "parameters": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("site", "token", "target", "index", "site_dir")
        },
        **result,
    }
    runs: dict[str, Any] = {}
    if args.out.exists():
        try:
            runs = json.loads(args.out.read_text()).get("runs", {})
        except (ValueError, AttributeError):
            runs = {}
    runs[args.label] = result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "big-updates", "runs": runs}, indent=2) + "\n")
    write_markdown(args.out.with_suffix(".md"), runs)
    print(json.dumps(result, indent=2))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
