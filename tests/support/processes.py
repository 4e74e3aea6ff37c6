"""Finding processes by their command line (to check that none outlived the test's parent)."""

from __future__ import annotations

from pathlib import Path


def processes_naming(marker: Path | str) -> list[int]:
    """Ids of the live processes whose command line contains `marker` (e.g. a test's work folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next(
                (line for line in (entry / "status").read_text().splitlines() if line.startswith("State:")),
                "",
            )
        except OSError:
            continue
        if str(marker) in cmdline and "zombie" not in state:
            found.append(int(entry.name))
    return found
