"""One process or many under torchrun: the same code, with these few helpers."""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vlmsam.errors import env_int


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on GPU)."""
    world = env_int("WORLD_SIZE", 1, lo=1)  # torchrun sets these; a hand-set bad value is one line
    local_rank = env_int("LOCAL_RANK", 0, lo=0, hi=world - 1 if world > 1 else 1 << 16)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistInfo(rank, world, local_rank, device)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    """Tear down in the order that avoids gloo's abort at interpreter exit (see ENVIRONMENT.md); the
    caller drops its DDP wrapper first, so that the collection below frees it."""
    gc.collect()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
