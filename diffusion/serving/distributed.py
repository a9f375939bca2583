"""Work split over the processes of `torchrun --nproc_per_node K -m diffusion COMMAND`.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; the process group starts on first use (NCCL with one GPU per rank, or
gloo on CPUs). Without torchrun every helper is the one-process identity: rank 0 of 1, every item, no messages.

Rank r computes items r, r + K, r + 2K, ... of a list and rank 0 receives every result in list order, so the
numbers equal a one-process run's as long as each item is computed the same way wherever it runs. The callers
therefore split whole batches, never resize them (a network's float rounding depends on the batch), and every
image's noise depends only on (seed, index) (sampling.image_generators). Only rank 0 writes files and prints.
"""

from __future__ import annotations

import atexit
import os
from typing import Callable, Sequence, TypeVar

import torch
import torch.distributed as dist

Item, Result = TypeVar("Item"), TypeVar("Result")


def process_group() -> tuple[int, int]:
    """(rank, world size); starts the process group under torchrun, each rank on its own GPU if there are GPUs."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if torch.cuda.is_available():
        torch.cuda.set_device(default_device())  # object collectives over NCCL use the current device
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    atexit.register(_leave_group)
    return dist.get_rank(), world


def _leave_group() -> None:
    """Wait for every rank, then close the group: a rank that exits with gloo's threads still running can die of
    SIGABRT at shutdown (seen twice under load in the two-rank tests, after the work was done and written)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_main() -> bool:
    return process_group()[0] == 0


def default_device(rank: int = 0) -> torch.device:
    """This process's GPU (LOCAL_RANK under torchrun, else `rank`), or the CPU."""
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count()
        return torch.device("cuda", local)
    return torch.device("cpu")


def map_sharded(compute: Callable[[Item], Result], items: Sequence[Item]) -> list[Result] | None:
    """[compute(item) for item in items], each item computed on one rank (rank r: items r, r + K, ...); the results
    in item order on rank 0, None on the other ranks. Results travel pickled: keep their tensors on the CPU."""
    rank, world = process_group()
    mine = [compute(item) for item in items[rank::world]]
    if world == 1:
        return mine
    by_rank = [None] * world if rank == 0 else None
    dist.gather_object(mine, by_rank, dst=0)
    if rank != 0:
        return None
    return [by_rank[i % world][i // world] for i in range(len(items))]


def from_main(value: Result) -> Result:
    """Rank 0's `value` on every rank, so that every rank plans the same work from what rank 0 read or decided."""
    if process_group()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(compute: Callable[[], Result]) -> Result:
    """compute() run on rank 0 alone (it reads or makes something once); its value on every rank."""
    return from_main(compute() if is_main() else None)
