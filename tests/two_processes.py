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
    torch.set_num_threads(1)  # OpenMP's pool does not survive a fork; two processes, two cores
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        out[rank] = work(rank, 2, *args)
    finally:
        dist.destroy_process_group()


def in_two_processes(work, *args) -> dict:
    """``work(rank, world, *args)`` in 2 gloo processes forked from this one (nothing imported again); what
    each returned, by rank."""
    out = mp.Manager().dict()
    mp.start_processes(_entry, args=(_free_port(), work, args, out), nprocs=2, start_method="fork")
    return dict(out)


def forked_cli(argv: list[str], fault=None, world: int = 2, timeout: float = 600) -> list[int]:
    """``freelabel ARGV`` in ``world`` processes forked from this one and wired the way torchrun wires its
    workers (the environment Lightning reads), so they start without importing anything again: each
    one's exit code, by rank (-N: killed by signal N). ``fault(rank)`` runs in each before the command."""
    import logging
    import signal
    import time
    import traceback

    env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world),
        "GROUP_RANK": "0",
        "TORCHELASTIC_RUN_ID": "forked",
    }
    pids = []
    for rank in range(world):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank))
                torch.set_num_threads(1)  # OpenMP's pool does not survive a fork; two processes, two cores
                logging.getLogger("freelabel").setLevel(logging.INFO)  # as the command sets it
                if fault:
                    fault(rank)
                from freelabel.cli import main

                code = main(argv)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        pids.append(pid)
    codes, deadline = {}, time.monotonic() + timeout
    while len(codes) < world:
        for pid in pids:
            if pid not in codes and (done := os.waitpid(pid, os.WNOHANG))[0]:
                codes[pid] = os.waitstatus_to_exitcode(done[1])
        if time.monotonic() > deadline:
            for pid in set(pids) - set(codes):
                os.kill(pid, signal.SIGKILL)
                codes[pid] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            raise TimeoutError(f"the {world} processes ran past {timeout} s")
        time.sleep(0.05)
    return [codes[pid] for pid in pids]
