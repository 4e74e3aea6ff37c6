"""Many sites with real-sized updates against one coordinator: round time, its breakdown, CPU per update.

    python bench/load.py --sites 128 --update-mib 1            # one cell
    python bench/load.py --cells 8x4 8x64 32x1 128x1 1000x1    # several (SITESxMIB)

A real `fedtune coordinator serve` (loopback; SQLite, or PostgreSQL with `--database-url`, where a fresh
database is made and dropped) runs as a child process. N synthetic sites (`bench/load_sites.py`: no
training, asyncio gRPC clients) are spread over `--processes` client processes. One FedAvg experiment,
all N sites every round, `--rounds` rounds (3); round 1 warms up and rounds 2.. are measured. Each
update is the model's layout: `--tensors` (8) float32 tensors of S/`--tensors` each, both ways.

Per measured round, the breakdown (from the coordinator's round times and the sites' timestamps, one
clock): lease (round opened -> last task leased), download (per site, median / max), upload+verify
(the PushUpdate call: stream, checks, sha256 and, under the round lock, the strategy's fold),
fold (the coordinator's `fedtune_fold_seconds`), commit (last update accepted -> round committed, and
`fedtune_commit_seconds`). The coordinator process: CPU (total over the measured rounds and per
update), RSS, threads (from /proc); errors by method, status and message code (clients) and by the
coordinator's `fedtune_rpc_errors_total`. The machine's load average before and after is recorded:
on a shared machine the figures are noisy.

Results are merged by cell into bench/results/load.json, and bench/results/load.md is rewritten.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from bench.synthetic_run import proc_sample, synthetic_spec_yaml, write_coordinator_config  # noqa: E402
from demo.processes import ProcessGroup, free_port  # noqa: E402
from fedtune.lifetime import child_env  # noqa: E402
from fedtune.v1 import admin_pb2, admin_pb2_grpc  # noqa: E402

ADMIN_TOKEN = "bench-admin"
COUNTS_ENV = "FEDTUNE_BENCH_SQL_COUNTS"  # bench/load_coordinator.py writes its SQL counts there
RESULTS = ROOT / "bench" / "results"


# -- the coordinator process ---------------------------------------------------------------------------
def cpu_at(samples: list[dict[str, float]], t: float) -> float:
    """The coordinator's CPU seconds at wall time `t`, interpolated between samples."""
    before = [s for s in samples if s["t"] <= t] or samples[:1]
    after = [s for s in samples if s["t"] >= t] or samples[-1:]
    a, b = before[-1], after[0]
    if b["t"] == a["t"]:
        return a["cpu_s"]
    return a["cpu_s"] + (b["cpu_s"] - a["cpu_s"]) * (t - a["t"]) / (b["t"] - a["t"])


def scrape(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=30) as answer:
        text = answer.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(("fedtune_fold_seconds_", "fedtune_commit_seconds_")) and not (
                sample.name.endswith("_bucket")
            ):
                out[sample.name] = sample.value
            elif sample.name == "fedtune_rpc_errors_total":
                key = f"{sample.labels['method']}:{sample.labels['code']}:{sample.labels['reason']}"
                out[f"rpc_error:{key}"] = sample.value
    return out


def read_sql_counts(path: Path) -> dict[str, float]:
    """The coordinator's SQL statements, transactions and commits so far (bench/load_coordinator.py)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {f"sql_{k}": float(v) for k, v in doc.items() if k != "t"}


# -- PostgreSQL: a database of the cell's own -----------------------------------------------------------
def make_database(url: str, name: str) -> str:
    import psycopg

    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + "/" + name


def drop_database(url: str, name: str) -> None:
    import psycopg

    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- one cell ------------------------------------------------------------------------------------------
async def drive(
    args: argparse.Namespace, target: str, pid: int, metrics_url: str, sites: list[str], sql_counts: Path
) -> dict[str, Any]:
    """Submit the experiment and watch it until its rounds end; sample the coordinator meanwhile."""
    channel = grpc.aio.insecure_channel(target)
    admin = admin_pb2_grpc.AdminStub(channel)  # type: ignore[no-untyped-call]
    metadata = [("authorization", f"Bearer {ADMIN_TOKEN}")]
    started = time.time()
    while True:  # every site registered
        status = await admin.GetStatus(admin_pb2.GetStatusRequest(), metadata=metadata, timeout=60)
        if status.workers_online >= len(sites):
            break
        if time.time() - started > args.timeout / 2:
            raise RuntimeError(f"only {status.workers_online} of {len(sites)} sites came online")
        await asyncio.sleep(0.5)
    connect_s = time.time() - started
    print(f"  {len(sites)} sites online in {connect_s:.1f} s", flush=True)
    samples: list[dict[str, float]] = [proc_sample(pid)]
    scrapes: dict[int, dict[str, float]] = {}
    experiment = await admin.SubmitExperiment(
        admin_pb2.SubmitExperimentRequest(
            spec_yaml=synthetic_spec_yaml("load-bench", sites, args.rounds, args.deadline), start=True
        ),
        metadata=metadata,
        timeout=60,
    )
    ref = admin_pb2.ExperimentRef(experiment_id=experiment.experiment_id)
    seen_round, state = 0, ""
    while time.time() - started < args.timeout:
        samples.append(proc_sample(pid))
        info = await admin.GetExperiment(ref, metadata=metadata, timeout=60)
        state = info.state
        if info.current_round != seen_round:
            seen_round = info.current_round
            scrapes[seen_round] = scrape(metrics_url) | read_sql_counts(sql_counts)  # round start
            print(f"  round {seen_round} open at +{time.time() - started:.1f} s", flush=True)
        if state in ("completed", "failed", "aborted"):
            break
        await asyncio.sleep(0.25)
    samples.append(proc_sample(pid))
    scrapes[-1] = scrape(metrics_url) | read_sql_counts(sql_counts)
    rounds = list(
        (
            await admin.ListRounds(
                admin_pb2.ListRoundsRequest(experiment_id=experiment.experiment_id),
                metadata=metadata,
                timeout=120,
            )
        ).rounds
    )
    await channel.close()
    return {
        "connect_s": connect_s,
        "experiment_state": state,
        "samples": samples,
        "scrapes": scrapes,
        "rounds": [
            {
                "round": r.round,
                "state": r.state,
                "opened": r.opened_unix,
                "closed": r.closed_unix,
                "updates": r.updates_received,
                "reason": r.reason,
            }
            for r in rounds
        ],
    }


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def breakdown(rnd: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    mine = [r for r in records if r["round"] == rnd["round"] and r["kind"] == "train"]
    opened, closed = rnd["opened"], rnd["closed"]
    leased = [r["leased"] for r in mine]
    downloads = [r["downloaded"] - r["download_start"] for r in mine if "downloaded" in r]
    uploads = [r["uploaded"] - r["upload_start"] for r in mine if "uploaded" in r]
    last_upload = max((r["uploaded"] for r in mine if "uploaded" in r), default=closed)
    return {
        "round": rnd["round"],
        "state": rnd["state"],
        "updates": rnd["updates"],
        "round_s": round(closed - opened, 2) if closed else None,
        "lease_s": round(max(leased) - opened, 2) if leased else None,
        "download_s_median": median(downloads),
        "download_s_max": round(max(downloads), 2) if downloads else None,
        "all_downloaded_s": round(max(r["downloaded"] for r in mine if "downloaded" in r) - opened, 2)
        if downloads
        else None,
        "upload_s_median": median(uploads),
        "upload_s_max": round(max(uploads), 2) if uploads else None,
        "all_uploaded_s": round(last_upload - opened, 2) if uploads else None,
        "commit_s": round(closed - last_upload, 2) if closed and uploads else None,
    }


def summarize(
    args: argparse.Namespace, sites: int, mib: float, watched: dict[str, Any], clients: list[dict[str, Any]]
) -> dict[str, Any]:
    records = [r for c in clients for r in c["records"]]
    errors: dict[str, int] = {}
    for c in clients:
        for key, count in c["errors"].items():
            errors[key] = errors.get(key, 0) + count
    rounds = sorted(watched["rounds"], key=lambda r: r["round"])
    measured = [r for r in rounds if r["round"] >= 2 and r["closed"]] or [r for r in rounds if r["closed"]]
    samples = watched["samples"]
    result: dict[str, Any] = {
        "sites": sites,
        "update_mib": mib,
        "rounds": [breakdown(r, records) for r in rounds],
        "rounds_committed": sum(r["state"] == "committed" for r in rounds),
        "rounds_asked": args.rounds,
        "experiment_state": watched["experiment_state"],
        "connect_s": round(watched["connect_s"], 1),
        "client_errors": errors,
        "busy_retries": sum(c["busy_retries"] for c in clients),
        "coordinator_threads_max": max(s["threads"] for s in samples),
        "coordinator_rss_mib_max": round(max(s["rss_mib"] for s in samples), 1),
    }
    if measured:
        t0, t1 = measured[0]["opened"], measured[-1]["closed"]
        updates = sum(r["updates"] for r in measured)
        cpu = cpu_at(samples, t1) - cpu_at(samples, t0)
        first = watched["scrapes"].get(measured[0]["round"], {})
        last = watched["scrapes"].get(-1, {})

        def delta(name: str) -> float:
            return float(last.get(name, 0.0)) - float(first.get(name, 0.0))

        result.update(
            {
                "measured_rounds": [r["round"] for r in measured],
                "measured_seconds": round(t1 - t0, 2),
                "measured_updates": updates,
                "coordinator_cpu_s": round(cpu, 2),
                "coordinator_cpu_share": round(cpu / (t1 - t0), 2) if t1 > t0 else None,
                "cpu_ms_per_update": round(1000 * cpu / updates, 1) if updates else None,
                "fold_ms_per_update": round(1000 * delta("fedtune_fold_seconds_sum") / updates, 1)
                if updates
                else None,
                "commit_s_per_round": round(delta("fedtune_commit_seconds_sum") / len(measured), 3),
                "sql_statements_per_update": round(delta("sql_statements") / updates, 1) if updates else None,
                "sql_transactions_per_update": round(delta("sql_transactions") / updates, 1)
                if updates
                else None,
                "sql_commits_per_update": round(delta("sql_commits") / updates, 2) if updates else None,
            }
        )
    result["coordinator_errors"] = {
        k.split(":", 1)[1]: v
        for k, v in watched["scrapes"].get(-1, {}).items()
        if k.startswith("rpc_error:") and v
    }
    return result


def run_cell(args: argparse.Namespace, sites_n: int, mib: float) -> dict[str, Any]:
    sites = {f"site-{i:05d}": f"token-{i}-load" for i in range(sites_n)}
    names = list(sites)
    processes = max(1, min(args.processes, sites_n))
    with tempfile.TemporaryDirectory(prefix="fedtune-load-") as tmp:
        work = Path(tmp)
        port, metrics_port = free_port(), free_port()
        database_url, db_name = None, ""
        if args.database_url:
            db_name = f"fedtune_load_{os.getpid()}"
            database_url = make_database(args.database_url, db_name)
        settings: dict[str, Any] = {
            "heartbeat_seconds": args.heartbeat_seconds,
            "max_pull_wait_seconds": args.pull_wait,
            "worker_offline_after_seconds": max(60.0, 6 * args.heartbeat_seconds),
            "task_lease_seconds": args.deadline,
            "metrics_port": metrics_port,
            "max_update_bytes": int(mib * (1 << 20)) + (1 << 20),
        }
        if database_url:
            settings["database_url"] = database_url
        config = write_coordinator_config(work, port, sites, ADMIN_TOKEN, **settings)
        sql_counts = work / "sql-counts.json"
        clients: list[subprocess.Popen[bytes]] = []
        try:
            with ProcessGroup(work / "logs") as group:
                log = (work / "logs" / "coordinator.log").open("ab")
                coordinator = subprocess.Popen(  # the real CLI, with its SQL counted (load_coordinator.py)
                    [
                        sys.executable,
                        str(ROOT / "bench" / "load_coordinator.py"),
                        "coordinator",
                        "serve",
                        "--config",
                        str(config),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=child_env({**os.environ, "PYTHONUNBUFFERED": "1", COUNTS_ENV: str(sql_counts)}),
                )
                group.processes["coordinator"] = coordinator
                channel = grpc.insecure_channel(f"127.0.0.1:{port}")
                grpc.channel_ready_future(channel).result(timeout=120)
                channel.close()
                profiler = None
                if args.profile:
                    profiler = subprocess.Popen(
                        [
                            str(Path(sys.executable).parent / "py-spy"),
                            "record",
                            "--pid",
                            str(coordinator.pid),
                            "--format",
                            args.profile_format,
                            "--output",
                            str(args.profile),
                            "--rate",
                            "100",
                            "--nonblocking",
                            "--gil",
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                for p in range(processes):
                    part = {n: sites[n] for n in names[p::processes]}
                    sites_file = work / f"sites-{p}.json"
                    sites_file.write_text(json.dumps(part))
                    clients.append(
                        subprocess.Popen(
                            [
                                sys.executable,
                                str(ROOT / "bench" / "load_sites.py"),
                                "--target",
                                f"127.0.0.1:{port}",
                                "--sites-file",
                                str(sites_file),
                                "--records",
                                str(work / f"records-{p}.json"),
                                "--update-mib",
                                str(mib),
                                "--tensors",
                                str(args.tensors),
                                "--train-seconds",
                                str(args.train_seconds),
                                "--heartbeat-seconds",
                                str(args.heartbeat_seconds),
                                "--pull-wait",
                                str(args.pull_wait),
                                "--seed",
                                str(p),
                            ],
                            env=child_env(),
                            stderr=(work / "logs" / f"sites-{p}.log").open("ab"),
                        )
                    )
                watched = asyncio.run(
                    drive(
                        args,
                        f"127.0.0.1:{port}",
                        coordinator.pid,
                        f"http://127.0.0.1:{metrics_port}/metrics",
                        names,
                        sql_counts,
                    )
                )
                for client in clients:
                    client.terminate()
                for client in clients:
                    client.wait(timeout=120)
                if profiler is not None:
                    profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                    profiler.wait(timeout=120)
        finally:
            for client in clients:
                if client.poll() is None:
                    client.kill()
            if db_name:
                drop_database(args.database_url, db_name)
        results = [json.loads((work / f"records-{p}.json").read_text()) for p in range(processes)]
        if watched["experiment_state"] != "completed":
            print((work / "logs" / "coordinator.log").read_text()[-4000:], file=sys.stderr)
    return summarize(args, sites_n, mib, watched, results)


# -- results -------------------------------------------------------------------------------------------
def write_markdown(doc: dict[str, Any], path: Path) -> None:
    lines = [
        "# Load: many sites with real-sized updates (issue 13)",
        "",
        "`python bench/load.py` (see its docstring); raw figures in `load.json`. Rounds 2.. are measured "
        "(round 1 warms up). Times in seconds from the round's opening; download and upload per site "
        "(median / max); upload includes verify and, under the round lock, the fold. CPU is the "
        "coordinator process's over the measured rounds, divided by their updates.",
        "",
        "| cell | date | load before / after | round s | lease s | download s | upload+verify s | "
        "all uploaded s | commit s | fold ms/upd | coord CPU ms/upd | CPU share | RSS MiB | threads | "
        "errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, cell in doc["cells"].items():
        rounds = [r for r in cell["rounds"] if r["round"] in cell.get("measured_rounds", [])]

        def col(key: str, rounds: list[dict[str, Any]] = rounds) -> str:
            return ", ".join("—" if r[key] is None else f"{r[key]:g}" for r in rounds)

        errors = {**cell["client_errors"], **{f"coord {k}": v for k, v in cell["coordinator_errors"].items()}}
        lines.append(
            f"| {name} | {cell['date'][:16]} | "
            f"{cell['loadavg_before'][0]:.1f} / {cell['loadavg_after'][0]:.1f} | "
            f"{col('round_s')} | {col('lease_s')} | "
            + ", ".join(f"{r['download_s_median']}/{r['download_s_max']}" for r in rounds)
            + " | "
            + ", ".join(f"{r['upload_s_median']}/{r['upload_s_max']}" for r in rounds)
            + f" | {col('all_uploaded_s')} | {col('commit_s')} | {cell.get('fold_ms_per_update')} | "
            f"**{cell.get('cpu_ms_per_update')}** | {cell.get('coordinator_cpu_share')} | "
            f"{cell['coordinator_rss_mib_max']} | {cell['coordinator_threads_max']:g} | "
            f"{errors or 'none'} |"
        )
    notes = doc.get("notes", [])
    if notes:
        lines += ["", *notes]
    path.write_text("\n".join(lines) + "\n")


def parse_cell(text: str) -> tuple[int, float]:
    sites, mib = text.lower().split("x")
    return int(sites), float(mib)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sites", type=int, default=32)
    parser.add_argument("--update-mib", type=float, default=1.0)
    parser.add_argument("--cells", nargs="*", default=None, help="SITESxMIB, e.g. 128x1 8x64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=4, help="client processes the sites share")
    parser.add_argument("--tensors", type=int, default=8)
    parser.add_argument("--train-seconds", type=float, default=2.0, help="each site sleeps U(0, this)")
    parser.add_argument("--heartbeat-seconds", type=float, default=5.0)
    parser.add_argument("--pull-wait", type=float, default=30.0)
    parser.add_argument("--deadline", type=float, default=1800.0, help="round deadline and task lease")
    parser.add_argument("--database-url", default="", help="PostgreSQL server URL (a database is made)")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the coordinator into this file")
    parser.add_argument("--profile-format", default="raw", help="py-spy format (raw, speedscope, flamegraph)")
    parser.add_argument("--label", default="", help="suffix for the cell's name in the results")
    parser.add_argument("--out", type=Path, default=RESULTS / "load.json")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    cells = [parse_cell(c) for c in args.cells] if args.cells else [(args.sites, args.update_mib)]
    doc: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {"cells": {}}
    for sites_n, mib in cells:
        name = (
            f"{sites_n}x{mib:g}MiB"
            + (" pg" if args.database_url else "")
            + (f" {args.label}" if args.label else "")
        )
        print(f"cell {name}", flush=True)
        load_before = os.getloadavg()
        cell = run_cell(args, sites_n, mib)
        cell = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "parameters": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in vars(args).items()
                if k not in ("cells", "out")
            },
            **cell,
        }
        print(json.dumps({k: v for k, v in cell.items() if k != "parameters"}, indent=1), flush=True)
        if not args.no_save:  # re-read: another run may have added cells meanwhile
            doc = json.loads(args.out.read_text()) if args.out.exists() else {"cells": {}}
            doc["cells"][name] = cell
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(doc, indent=2) + "\n")
            write_markdown(doc, args.out.with_suffix(".md"))


if __name__ == "__main__":
    main()
