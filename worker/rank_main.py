"""`python -m worker.rank_main JOB_DIR`: one training process of a multi-process train task.

Started by torchrun (worker/torchrun.py), one per GPU: joins the process group (NCCL on GPUs, gloo on
CPUs), builds the model, trains its shard in DDP (worker/ranks.py) and, on rank 0, evaluates, applies
the privacy settings and writes the update for the daemon (worker/rank_job.py), which alone talks to
the coordinator. A failure is written to the job folder (never a message that may quote site data:
that goes to this process's stderr, the site's worker log) and ends the process with exit code 1,
which makes torchrun stop the other ranks.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from fedtune.lifetime import end_with_parent_from_env

log = logging.getLogger("fedtune.worker.rank")


def _device(setting: str, local_rank: int) -> str:
    """This rank's device: GPU `local_rank` unless the site trains on CPUs."""
    import torch

    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return "cpu"
    return f"cuda:{local_rank}"


def run(job_dir: Path) -> None:
    from fedtune.spec import load_spec_json
    from worker import rank_job, ranks, tasks
    from worker.device import THREADS_ENV, select_device

    group = ranks.from_env()
    rank_job.mark_started(job_dir, group.rank)
    job = rank_job.read_job(job_dir)
    if job.torch_threads:
        os.environ[THREADS_ENV] = str(job.torch_threads)
    device = select_device(_device(job.device, group.local_rank))
    ranks.join(group, device.device)
    try:

        def progress(text: str) -> None:
            if group.is_main:
                rank_job.write_progress(job_dir, text)

        output = tasks.run_train(
            load_spec_json(job.spec_json),
            job.stage_index,
            job.round,
            job.global_path,
            job.data_root,
            job.model_root,
            site=job.site,
            progress=progress,
            device=device,
            base_adapter_path=job.base_adapter_path,
            max_lora_rank=job.max_lora_rank,
            sites_in_round=job.sites_in_round,
            ranks=group,
        )
        if group.is_main:
            rank_job.write_output(job_dir, output)
    finally:
        ranks.leave()


def main(argv: list[str]) -> int:
    end_with_parent_from_env()  # torchrun asked (worker/torchrun.py): end with it
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s rank {rank} %(name)s: %(message)s",
        stream=sys.stderr,
    )
    job_dir = Path(argv[0])
    try:
        run(job_dir)
    except BaseException as err:  # noqa: BLE001 - every failure is reported, then the process ends
        from worker.rank_job import write_error

        log.exception("training process %s failed", rank)
        write_error(job_dir, int(rank), err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
