"""Process groups: ``--gpus N`` (NCCL), ``--cpu --nproc N`` (gloo) and ``torchrun`` (read from the environment)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nmt.device import configure_cuda


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(rank: int, world: int, local_rank: int, use_cuda: bool, port: int | None = None) -> Dist:
    """Join the process group (when world > 1) and pick this rank's device."""
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        configure_cuda()
    if world > 1 and not dist.is_initialized():
        if port is not None:
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ["MASTER_PORT"] = str(port)
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world, device_id=device if use_cuda else None)
    return Dist(rank, world, local_rank, device)


def all_reduce_(tensor: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(tensor)
    return tensor


def all_reduce_grads_(params: list[torch.nn.Parameter], world: int) -> None:
    """Sum gradients over ranks in one flat buffer (a rank that skipped its batches contributes zeros)."""
    if world == 1:
        return
    grads = [p.grad for p in params]
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    for g, reduced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(reduced)


def gather_objects(obj: object, world: int) -> list[object]:
    if world == 1:
        return [obj]
    out: list[object] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
