"""Crash invariant: a coordinator killed mid blob write leaves no partial blob and no row.

The child process stores a model version whose tensors come through a FIFO that the test
feeds: a large file "written slowly", so the kill lands provably in the middle of the put.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from storage.blobs import LocalBlobStore
from storage.models import ModelVersion
from storage.uow import UnitOfWorkFactory

CHILD = """
import sys
from pathlib import Path
from storage.blobs import LocalBlobStore
from storage.db import open_registry
from storage.registry import store_model_version

url, blob_root, tensors, experiment_id = sys.argv[1:5]
engine, uow_factory = open_registry(url)
store_model_version(
    uow_factory, LocalBlobStore(Path(blob_root)), tensors_path=Path(tensors),
    files={"adapter_config.json": b"{}"}, experiment_id=experiment_id, version=1, parent_id=None,
    stage_index=0, stage_name="finetune", round=1, kind="adapter", manifest={}, metrics={},
    sites=["a"], num_examples=1,
)
print("COMMITTED", flush=True)
"""
MIB = 1 << 20


def _wait_for(condition, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


def _open_fifo_for_writing(fifo: Path, child: subprocess.Popen[bytes], timeout_s: float) -> int:
    """Open the FIFO's write end once the child has opened its read end (bounded wait)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.set_blocking(fd, True)
            return fd
        except OSError as err:
            if err.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
        if child.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"child never opened the tensors FIFO (rc={child.poll()})")
        time.sleep(0.02)


@pytest.mark.slow
def test_sigkill_mid_blob_write_leaves_no_partial_blob_and_no_row(
    database_url: str, uow_factory: UnitOfWorkFactory, experiment_id: str, tmp_path: Path
) -> None:
    # Prepare: a child storing a model version whose tensors arrive slowly through a FIFO
    blob_root = tmp_path / "blobs"
    store = LocalBlobStore(blob_root)
    fifo = tmp_path / "tensors.safetensors"
    os.mkfifo(fifo)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, database_url, str(blob_root), str(fifo), experiment_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        fd = _open_fifo_for_writing(fifo, child, timeout_s=30)
        for _ in range(8):  # 8 MiB of a model that would be far larger
            os.write(fd, os.urandom(MIB))
        temp_dir = blob_root / "tmp"
        _wait_for(
            lambda: any(p.stat().st_size >= 4 * MIB for p in temp_dir.iterdir()), 30, "a half-written blob"
        )

        # Execute: kill the child mid-write
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        os.close(fd)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)

    # Assert: the kill landed mid-put; nothing under sha256/, no row; the leftover is cleaned up
    assert child.returncode == -signal.SIGKILL
    assert b"COMMITTED" not in (child.stdout.read() if child.stdout else b"")
    assert [p for p in (blob_root / "sha256").rglob("*") if p.is_file()] == []
    with uow_factory() as uow:
        assert uow.session.scalar(select(func.count()).select_from(ModelVersion)) == 0
    assert store.cleanup_partial() == 1
    assert list((blob_root / "tmp").iterdir()) == []
    assert store.cleanup_partial() == 0
