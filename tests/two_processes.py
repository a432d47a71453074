"""For the tests that compare 2 gloo processes, each holding half the batch, with 1 process holding it all."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def randn(*shape, seed=0) -> torch.Tensor:
    """A seeded normal tensor: the same in every process."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, port: int, work, args: tuple, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        out[rank] = work(rank, 2, *args)
    finally:
        dist.destroy_process_group()


def in_two_processes(work, *args) -> dict:
    """``work(rank, world, *args)`` in 2 gloo processes (a module-level function); what each returned, by rank."""
    out = mp.Manager().dict()
    mp.spawn(_entry, args=(_free_port(), work, args, out), nprocs=2)
    return dict(out)
