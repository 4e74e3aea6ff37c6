"""A child process that ends with its parent: `fedtune` commands started by the demo, the benchmarks
or the tests must not outlive them, even when the parent is killed with SIGKILL.

The parent sets ``FEDTUNE_PARENT_PID`` in the child's environment (``demo.processes``). The
child, at start, asks Linux to send it SIGTERM when its parent dies (``PR_SET_PDEATHSIG``: set in the
child itself, after exec, so no ``preexec_fn`` runs in a multi-threaded parent) or, where that is not
available, watches its parent id from a daemon thread. One SIGTERM, either way, which takes the
command's own graceful path (a coordinator stops serving, a worker abandons its task). The variable
is removed from the environment so that grandchildren do not inherit a parent id that is not theirs.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time

PARENT_PID_ENV = "FEDTUNE_PARENT_PID"
_PR_SET_PDEATHSIG = 1
log = logging.getLogger("fedtune.lifetime")


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (or a copy of this process's) telling a `fedtune` child to end with this process."""
    return {**(os.environ if env is None else env), PARENT_PID_ENV: str(os.getpid())}


def _ask_kernel_for_sigterm_on_parent_death() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)) == 0
    except (OSError, AttributeError):  # pragma: no cover  (no prctl: watch the parent id instead)
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable; watching the parent id instead")
        return False


def end_with_parent_from_env(poll_seconds: float = 1.0) -> bool:
    """If started by a parent that asked for it, end (SIGTERM to self) when that parent dies."""
    value = os.environ.pop(PARENT_PID_ENV, "")
    if not value.isdigit():
        return False
    parent = int(value)
    armed = _ask_kernel_for_sigterm_on_parent_death()
    if os.getppid() != parent:  # the parent died before we could ask
        os.kill(os.getpid(), signal.SIGTERM)
        return True
    if armed:
        return True

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="fedtune-parent-watch", daemon=True).start()
    return True
