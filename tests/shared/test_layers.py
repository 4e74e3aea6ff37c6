"""The layer contract (pyproject.toml [tool.importlinter], docs/decisions.md 28) holds.

`make lint` runs `lint-imports` too; this test makes `make test` (what CI runs) catch a broken layer.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    importlib.util.find_spec("importlinter") is None,
    reason="import-linter is not installed (it is in the dev extra: pip install -e '.[dev]')",
)
def test_imports_keep_the_layer_contract() -> None:
    # Prepare: this checkout's packages first on the path, no cache written into the tree
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    command = (
        "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    )

    # Execute
    run = subprocess.run(
        [sys.executable, "-c", command, "--no-cache", "--no-logo"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    # Assert
    assert run.returncode == 0, f"lint-imports found a broken contract:\n{run.stdout}\n{run.stderr}"
    assert "broken" not in run.stdout.lower().replace("0 broken", "")
