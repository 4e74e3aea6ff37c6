"""`python -m worker.torchrun JOB_DIR PROCESSES`: torchrun for one train task, tied to the daemon's life.

The daemon (worker/launcher.py) starts this process; it runs torch's own launcher
(`torch.distributed.run`: a standalone rendezvous on a free local port, no restarts) with
`PROCESSES` children of `worker.rank_main`. Lifetimes chain: this process ends with the daemon and
every rank ends with this process (fedtune/lifetime.py: PR_SET_PDEATHSIG, asked by each process
for itself), so a SIGKILLed daemon leaves no training process behind; on SIGTERM torchrun's agent
stops the ranks itself. When a rank fails, torchrun's verdict per rank (exit code or signal) is
written to the job folder for the daemon's error report.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fedtune.lifetime import PARENT_PID_ENV, end_with_parent_from_env


def torchrun_args(job_dir: Path, processes: int) -> list[str]:
    return [
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={processes}",
        "--max-restarts=0",
        "--monitor-interval=0.2",
        "-m",
        "worker.rank_main",
        str(job_dir),
    ]


def main(argv: list[str]) -> int:
    end_with_parent_from_env()
    job_dir, processes = Path(argv[0]), int(argv[1])
    os.environ[PARENT_PID_ENV] = str(os.getpid())  # each rank ends with this process
    from torch.distributed import run
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from worker.rank_job import write_failures

    try:
        run.main(torchrun_args(job_dir, processes))
    except ChildFailedError as err:
        verdicts = {}
        for rank, failure in err.failures.items():
            ended = (
                f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
            )
            verdicts[rank] = ended
        write_failures(job_dir, verdicts)
        return 1
    except SignalException as err:  # SIGTERM from the daemon: torchrun has stopped the ranks
        return 128 + int(err.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
