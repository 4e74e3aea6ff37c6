"""One training run over several processes (one per GPU): the sharding and collectives a rank needs.

A train task on a site started with `--processes N` runs in N torchrun children (worker/launcher.py,
worker/rank_main.py), each holding a `RankGroup`. Every rank draws the same seeded step order as a
single process would (worker/training.py `_batch_order`) and takes its share of each step's examples
with `shard` (strided, as torch's DistributedSampler does), so the N ranks together see exactly the
examples one process would see, step by step; DDP all-reduces the gradients. The spec's `batch_size`
stays the micro-batch of one forward pass and `batch_size * gradient_accumulation_steps` stays the
examples of one optimiser step over the whole site: the same spec means the same optimisation on a
site with one GPU or eight, the larger one just gets there sooner.

Losses are normalised over the whole step (all ranks): a language-model micro-batch divides its
summed token loss by the step's scored tokens on all ranks, a classification micro-batch weighs its
mean by its share of the step's examples; both are multiplied by the world size because DDP averages
the ranks' gradients. With no dropout the N-process update equals the one-process update up to float
summation order (tests/worker/test_ranks_training.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

# What torchrun (torch.distributed.run) sets in every child's environment.
RANK_ENV, WORLD_ENV, LOCAL_RANK_ENV = "RANK", "WORLD_SIZE", "LOCAL_RANK"
COLLECTIVE_TIMEOUT = timedelta(minutes=30)  # a rank stuck this long in a collective is a failure


@dataclass(frozen=True)
class RankGroup:
    """This process's place in the site's training group. `world_size` 1 is a group of one."""

    rank: int
    world_size: int
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that evaluates, applies privacy and writes the update for the daemon."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    def shard(self, indices: np.ndarray) -> np.ndarray:
        """This rank's share of one step's examples: every world_size-th from position `rank`."""
        return indices[self.rank :: self.world_size]

    def sum(self, value: float, device: torch.device) -> float:
        """`value` summed over all ranks (itself in a group of one)."""
        if not self.distributed:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return float(total.item())

    def maximum(self, value: float, device: torch.device) -> float:
        if not self.distributed:
            return value
        top = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
        return float(top.item())

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """`model` in DistributedDataParallel (its trainable parameters' gradients all-reduced)."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # Every rank built the same base and loaded the same global tensors, and the buffers (rotary
        # frequencies, position ids) are computed, not learned: nothing to broadcast, neither at start
        # (a frozen 8B base would be 16 GB per task) nor before each forward.
        return DistributedDataParallel(
            model,
            device_ids=ids,
            output_device=device if ids else None,
            init_sync=False,
            forward_sync_buffers=False,  # torch >= 2.13 (pinned); before it: broadcast_buffers=False
        )


def from_env() -> RankGroup:
    """The group torchrun describes in the environment (a group of one when not under torchrun)."""
    return RankGroup(
        rank=int(os.environ.get(RANK_ENV, "0")),
        world_size=int(os.environ.get(WORLD_ENV, "1")),
        local_rank=int(os.environ.get(LOCAL_RANK_ENV, "0")),
    )


def join(group: RankGroup, device: torch.device) -> None:
    """Join the process group: NCCL between GPUs, gloo on CPUs (torchrun's rendezvous in the env)."""
    if group.world_size <= 1 or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=group.rank, world_size=group.world_size, timeout=COLLECTIVE_TIMEOUT)


def leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["RankGroup", "from_env", "join", "leave"]
