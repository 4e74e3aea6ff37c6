"""`fedtune coordinator serve` with its SQL counted, for bench/load.py.

Runs the real coordinator CLI in this process after hooking SQLAlchemy's engine events: every
statement, transaction (begin) and commit of any engine is counted, and the counts are written
(atomically) to ``$FEDTUNE_BENCH_SQL_COUNTS`` every 0.2 s. The load benchmark reads them at round
boundaries: statements and transactions per update do not depend on how loaded the machine is,
unlike CPU seconds. Benchmark-only: nothing in the product imports this.

    python bench/load_coordinator.py coordinator serve --config coordinator.yaml
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from sqlalchemy import event  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

COUNTS_ENV = "FEDTUNE_BENCH_SQL_COUNTS"
counts = {"statements": 0, "transactions": 0, "commits": 0}
_lock = threading.Lock()


def _bump(key: str) -> None:
    with _lock:
        counts[key] += 1


@event.listens_for(Engine, "before_cursor_execute")
def _statement(*_: Any) -> None:
    _bump("statements")


@event.listens_for(Engine, "begin")
def _begin(*_: Any) -> None:
    _bump("transactions")


@event.listens_for(Engine, "commit")
def _commit(*_: Any) -> None:
    _bump("commits")


def _writer(path: Path) -> None:
    while True:
        with _lock:
            text = json.dumps({**counts, "t": time.time()})
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        time.sleep(0.2)


def main() -> None:
    target = os.environ.get(COUNTS_ENV)
    if target:
        threading.Thread(target=_writer, args=(Path(target),), daemon=True).start()
    from fedtune.cli import main as fedtune_main

    sys.argv = ["fedtune", *sys.argv[1:]]
    fedtune_main()


if __name__ == "__main__":
    main()
