"""Every process the project starts ends with its parent, even when the parent is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PARENT = """
import sys, time
from pathlib import Path
from demo.processes import ProcessGroup
group = ProcessGroup(Path(sys.argv[1]) / "logs")
args = ["coordinator", "serve", "--port", "0", "--data-dir", sys.argv[1] + "/data"]
child = group.start("coordinator", args)
print(child.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is as good as gone
        return stat.read().split()[2] != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_coordinator_started_by_a_killed_parent_stops(tmp_path: Path) -> None:
    # Prepare: a parent (like the demo or a benchmark) that started a coordinator
    command = [sys.executable, "-c", PARENT, str(tmp_path)]
    parent = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    deadline = time.monotonic() + 60
    log = tmp_path / "logs" / "coordinator.log"
    while "coordinator listening" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, "the coordinator did not start"
        time.sleep(0.1)
    # Execute: the parent dies without cleaning up
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    # Assert: the coordinator takes its graceful SIGTERM path and exits within seconds
    deadline = time.monotonic() + 15
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child_pid), "the coordinator outlived its parent"
    assert "coordinator stopped" in log.read_text()


@pytest.mark.slow
def test_a_coordinator_stops_once_however_many_signals_it_gets(tmp_path: Path) -> None:
    # Prepare
    log = tmp_path / "coordinator.log"
    command = [sys.executable, "-m", "fedtune", "coordinator", "serve", "--port", "0"]
    with log.open("wb") as out:
        child = subprocess.Popen(
            [*command, "--data-dir", str(tmp_path / "data")], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while "coordinator listening" not in log.read_text():
            assert time.monotonic() < deadline and child.poll() is None, log.read_text()
            time.sleep(0.1)
        # Execute: SIGTERM, and again while it stops (an impatient operator, or the parent's death + a watch)
        for _ in range(3):
            child.send_signal(signal.SIGTERM)
        # Assert: it ends (a signal that lands after the stop, while Python exits, may end it as SIGTERM)
        assert child.wait(timeout=30) in (0, -signal.SIGTERM), log.read_text()
        assert log.read_text().count("coordinator stopped") == 1
    finally:
        if child.poll() is None:  # a coordinator that hung must not outlive the test
            child.kill()
            child.wait()
