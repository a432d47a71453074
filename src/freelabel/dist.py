"""Who this process is among the processes of a run, and the collectives that losses and queues use.

Outside a distributed run every function is the identity (one process holds the whole batch).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a distributed run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every process's loss depends on every slice: sum their gradients
        rank, n = dist.get_rank(), grad.shape[0] // dist.get_world_size()
        return grad[rank * n : (rank + 1) * n]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all processes along dim 0, with gradients flowing back to each slice."""
    return _GatherWithGrad.apply(x) if world()[1] > 1 else x


@torch.no_grad()
def gather_detached(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all processes along dim 0, in rank order, without gradients."""
    if world()[1] == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world()[1])]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def _pass_round(x: torch.Tensor, step: int) -> torch.Tensor:
    """Send ``x`` to process ``rank + step`` and return what process ``rank - step`` sent (a ring)."""
    rank, n = world()
    received = torch.empty_like(x)
    ops = [
        dist.P2POp(dist.isend, x.contiguous(), (rank + step) % n),
        dist.P2POp(dist.irecv, received, (rank - step) % n),
    ]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return received


class _RingPass(torch.autograd.Function):
    """Forward: the previous process's tensor; backward: the gradient goes back to where it came from."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return _pass_round(x, 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _pass_round(grad, -1)


def ring_pass(x: torch.Tensor) -> torch.Tensor:
    """The ``x`` of process ``rank - 1`` (a ring), with gradients sent back to it."""
    return _RingPass.apply(x)
