"""A coordinator and workers run as a user runs them: `fedtune ...` subprocesses, every wait bounded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedtune.lifetime import child_env
from tests.support.waiting import wait_for

FEDTUNE = [sys.executable, "-m", "fedtune"]
# The source tree first: an editable install made before coordinator/ and worker/ had an __init__.py
# maps them as namespace packages, which skips their __init__ when run from another directory.
REPO_ROOT = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without FEDTUNE_* (so neither side picks up the other's settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDTUNE_")}
    python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    env.update(
        PYTHONPATH=python_path,
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        **extra,
    )
    return env


class Cluster:
    def __init__(self, root: Path, port: int, coordinator_env: dict[str, str] | None = None) -> None:
        self.root = root
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.coordinator_env = coordinator_env or {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.tokens: dict[str, str] = {}

    # -- processes -----------------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log_path = self.root / f"{name}.log"
        self.logs[name] = log_path
        handle = open(log_path, "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            FEDTUNE + args, stdout=handle, stderr=subprocess.STDOUT, env=child_env(env), cwd=self.root
        )
        handle.close()
        self.processes[name] = proc
        return proc

    def start_coordinator(self) -> None:
        data_dir = self.root / "coordinator-data"
        env = clean_env(**self.coordinator_env)
        self._spawn(
            "coordinator",
            ["coordinator", "serve", "--port", str(self.port), "--data-dir", str(data_dir)],
            env,
        )
        wait_for(
            lambda: self._alive("coordinator") and self.admin_ok("status"),
            60,
            "the coordinator to answer",
            interval=0.5,
        )

    def start_worker(
        self, site: str, data_root: Path, model_root: Path, *options: str
    ) -> subprocess.Popen[bytes]:
        """`fedtune worker run` for `site` on CPU; `options`: more flags (e.g. "--processes", "2")."""
        env = clean_env(FEDTUNE_TORCH_THREADS="1", FEDTUNE_TOKEN=self.tokens[site])
        args = [
            "worker",
            "run",
            "--coordinator",
            self.address,
            "--site",
            site,
            "--data-root",
            str(data_root),
            "--model-root",
            str(model_root),
            "--device",
            "cpu",
            *options,
        ]
        return self._spawn(f"worker-{site}", args, env)

    def _alive(self, name: str) -> bool:
        proc = self.processes[name]
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")
        return True

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.processes[name]
        if proc.poll() is None:
            proc.send_signal(sig)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in reversed(list(self.processes.values())):  # workers first, then the coordinator
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)

    def tail(self, name: str, lines: int = 40) -> str:
        path = self.logs.get(name)
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def all_tails(self) -> str:
        return "\n".join(f"===== {name} =====\n{self.tail(name)}" for name in self.processes)

    def log_text(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace") if name in self.logs else ""

    # -- admin CLI -----------------------------------------------------------------------------------
    def admin(self, *args: str, timeout: float = 60) -> Any:
        result = subprocess.run(
            FEDTUNE + ["admin", "--coordinator", self.address, "--json", *args],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=timeout,
            cwd=self.root,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"fedtune admin {' '.join(args)} failed ({result.returncode}): {result.stderr}"
            )
        return json.loads(result.stdout) if result.stdout.strip() else None

    def admin_ok(self, *args: str) -> bool:
        try:
            self.admin(*args, timeout=20)
            return True
        except (AssertionError, subprocess.TimeoutExpired):
            return False

    def add_site(self, name: str) -> str:
        self.tokens[name] = str(self.admin("sites", "add", name)["token"])
        return self.tokens[name]

    def wait_workers_online(self, sites: list[str], timeout: float = 120) -> None:
        def online() -> bool:
            for name, proc in self.processes.items():
                if proc.poll() is not None and name.startswith("worker-"):
                    raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")
            found = self.admin("workers")["workers"]
            return set(sites) <= {w["site"] for w in found if w["state"] in ("online", "busy")}

        wait_for(online, timeout, f"workers of {sites} to register", interval=1)

    def wait_experiment(self, experiment_id: str, timeout: float) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            for name in self.processes:
                if name == "coordinator":
                    self._alive(name)
            shown = self.admin("experiment", "show", experiment_id)
            return shown if shown["state"] in ("completed", "failed", "aborted") else None

        result: dict[str, Any] = wait_for(
            finished, timeout, f"experiment {experiment_id} to finish", interval=2
        )
        return result


E2E_LABELS = ["sport", "business"]
E2E_SITES = ["site-a", "site-b"]


def running_cluster(tmp_path: Path, port: int, **coordinator_env: str) -> Iterator[Cluster]:
    """A cluster whose processes are always stopped; their log tails print when the test failed."""
    cluster = Cluster(tmp_path, port, {"FEDTUNE_HEARTBEAT_SECONDS": "1", **coordinator_env})
    try:
        yield cluster
    finally:
        cluster.stop_all()
        print(cluster.all_tails())  # shown by pytest only when the test failed
