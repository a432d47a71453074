"""Momentum teachers: slowly moving copies of a student's networks (BYOL's target, MoCo's key encoder,
DINO's and I-JEPA's teachers), and the exponential moving average that drives them."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
import torch.nn as nn

from .schedules import cosine_schedule


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online`` for parameters; buffers (BatchNorm
    statistics) are copied."""
    t_params, o_params = list(target.parameters()), list(online.parameters())
    torch._foreach_lerp_(t_params, o_params, 1.0 - momentum)
    for t, o in zip(target.buffers(), online.buffers()):
        t.copy_(o)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` that takes no gradients."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


class MomentumTeacher(nn.Module):
    """Frozen copies of a student's modules, by name, that follow them slowly:

        teacher <- m teacher + (1 - m) student      after every optimiser step (:meth:`update`)
        m: ``momentum`` at the start, to ``final`` at the end, along a cosine (or linearly, or constant)

    ``teacher["backbone"]`` is the copy of the student's backbone; calling the teacher runs its modules
    one after the other (backbone, then head). The student's modules themselves are kept (not owned:
    they are not in the teacher's state dict) to update from."""

    def __init__(self, student: dict[str, nn.Module], momentum: float, final: float = 1.0, schedule: str = "cosine"):
        super().__init__()
        if schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"a momentum schedule is cosine, linear or constant, not {schedule!r}")
        for name, module in student.items():
            self.add_module(name, frozen_copy(module))
        self.student = list(student.values())
        self.base, self.final, self.schedule, self.momentum = momentum, final, schedule, momentum

    def __getitem__(self, name: str) -> nn.Module:
        return self._modules[name]

    def __contains__(self, name: str) -> bool:
        return name in self._modules

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def set_progress(self, progress: float) -> None:
        """The momentum at ``progress`` (0 to 1) of the run."""
        if self.schedule == "cosine":
            self.momentum = cosine_schedule(progress, self.base, self.final)
        elif self.schedule == "linear":
            self.momentum = self.base + (self.final - self.base) * min(progress, 1.0)

    def update(self) -> None:
        """One step of the moving average towards the student."""
        ema_update(self, nn.ModuleList(self.student), self.momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x
