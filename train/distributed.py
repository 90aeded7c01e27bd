"""Single-process or ``torchrun`` (DDP) setup shared by every trainer: NCCL on GPU, gloo on CPU."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> DistContext:
    """Read torchrun's environment; initialise the process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        log.info("DDP rank %d/%d on %s", rank, world, dev)
    return DistContext(rank, world, local, dev)


def teardown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.enabled:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= ctx.world_size
    return value


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of one training step on one rank: data order and noise are a function of (seed, step, rank),
    which is what makes resume exact."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step * 131 + rank)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
