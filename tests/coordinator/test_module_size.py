"""coordinator/ stays readable: a module does one job and fits on a few screens (house style 12)."""

from __future__ import annotations

from pathlib import Path

COORDINATOR = Path(__file__).resolve().parents[2] / "coordinator"
MAX_MODULE_LINES = 300


def test_no_coordinator_module_is_over_300_lines() -> None:
    # Prepare / Execute
    sizes = {
        p.relative_to(COORDINATOR.parent): len(p.read_text().splitlines()) for p in COORDINATOR.rglob("*.py")
    }

    # Assert
    over = {str(path): lines for path, lines in sizes.items() if lines > MAX_MODULE_LINES}
    assert sizes and over == {}, f"split these by job (limit {MAX_MODULE_LINES} lines): {over}"
