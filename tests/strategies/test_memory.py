"""Folding stays O(model) in memory however many sites report (measured in a child process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITES, UPDATE_MIB = 8, 64


@pytest.mark.slow
def test_fedavg_folds_eight_64mib_updates_with_rss_growth_under_three_updates(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "tests.strategies.memory_probe", str(tmp_path), str(SITES), str(UPDATE_MIB)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )

    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    growth_mib = figures["growth"] / (1 << 20)
    print(
        f"fedavg, {SITES} x {UPDATE_MIB} MiB updates: peak RSS growth {growth_mib:.1f} MiB "
        f"(baseline {figures['baseline_rss'] / (1 << 20):.1f} MiB, {figures['seconds']:.2f} s)"
    )
    assert growth_mib < 3 * UPDATE_MIB
