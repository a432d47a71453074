"""Schedules over a run's progress (0 at the start, 1 at the end of its budget): pure functions, and the
one that drives the optimiser's learning rate and weight decay."""

from __future__ import annotations

import math

import torch

from .config import OptimConfig


def cosine_schedule(progress: float, start: float, end: float) -> float:
    """``start`` at progress 0, ``end`` at progress 1, along half a cosine (BYOL's momentum, DINO's
    teacher momentum and weight decay)."""
    return end - (end - start) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1) / 2


def lr_at(progress: float, warmup: float, min_lr: float = 0.0) -> float:
    """Multiplier of the peak learning rate: linear warm-up over ``warmup``, then cosine to ``min_lr``."""
    if progress < warmup:
        return progress / warmup
    t = min(1.0, (progress - warmup) / max(1e-12, 1 - warmup))
    return min_lr + (1 - min_lr) * 0.5 * (1 + math.cos(math.pi * t))


class OptimizerSchedule:
    """Sets every parameter group's learning rate (warm-up, then cosine from the group's peak) and, with
    ``weight_decay_end``, its weight decay (cosine; groups without decay keep none)."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig):
        self.optimizer, self.cfg = optimizer, cfg
        self.peaks = [g["lr"] for g in optimizer.param_groups]  # before a resumed optimiser brings its last lr

    def __call__(self, progress: float) -> None:
        cfg = self.cfg
        for group, peak in zip(self.optimizer.param_groups, self.peaks):
            group["lr"] = peak * lr_at(progress, cfg.warmup, cfg.min_lr)
            if group["weight_decay"] and cfg.weight_decay_end is not None:
                group["weight_decay"] = cosine_schedule(progress, cfg.weight_decay, cfg.weight_decay_end)
