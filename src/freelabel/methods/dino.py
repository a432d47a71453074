"""DINO (Caron et al., 2021): self-distillation with no labels. A student matches, from every view,
the output distribution a momentum teacher gives to the *other* global views.

    t1, t2 = teacher(g1), teacher(g2)                       # global views only; EMA of the student
    s = [student(v) for v in (g1, g2, *locals)]             # multi-crop: 2 global + N local views
    loss = mean over pairs i != j of  H(softmax((t_i - C) / tau_t), softmax(s_j / tau_s))
    C <- m C + (1 - m) mean(t)                              # centring (all-reduced) avoids collapse
    teacher <- lambda teacher + (1 - lambda) student;  lambda: 0.996 -> 1 along a cosine
    tau_t warms up linearly; the last layer is frozen for the first part of training.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.loader import Batch
from ..data.views import ViewConfig
from ..ema import MomentumTeacher
from ..heads import DINOHead
from ..losses import dino_loss, distillation_signs, update_center
from .base import Method

COLLAPSE_ADVICE = (
    "a DINO teacher collapses when it is sharpened too hard or centred too slowly: try "
    "--set method_args.teacher_temp=0.04 --set method_args.warmup_teacher_temp=0.04 "
    "--set method_args.center_momentum=0.9, a lower --lr, or a larger --batch-size"
)


def multi_crop(
    views: ViewConfig, local_crops: int, local_size: int, local_scale: tuple[float, float]
) -> list[ViewConfig]:
    """DINO's views: two global ones (blurred always / rarely and solarized) and ``local_crops`` small ones."""
    blur = views.blur > 0
    return [
        dataclasses.replace(views, blur=1.0 * blur),
        dataclasses.replace(views, blur=0.1 * blur, solarize=0.2),
        *[dataclasses.replace(views, size=local_size, scale=tuple(local_scale), blur=0.5 * blur)] * local_crops,
    ]


def teacher_temperature(progress: float, start: float, end: float, warmup: float) -> float:
    """From ``start`` to ``end`` linearly over the first ``warmup`` of the run, then ``end``."""
    return end if progress >= warmup else start + (end - start) * progress / warmup


def drop_last_layer_grads(head: DINOHead, progress: float, until: float) -> None:
    """The prototypes stay put for the first ``until`` of the run (DINO's frozen last layer)."""
    if progress < until:
        for p in head.last_layer.parameters():
            p.grad = None


class DINO(Method):
    health_scalars = ("teacher_entropy", "student_kl", "prototype_spread", "center_drift")
    collapse_advice = COLLAPSE_ADVICE

    def __init__(
        self,
        backbone: nn.Module,
        views: ViewConfig,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        teacher_temp_warmup: float = 0.1,
        momentum: float = 0.996,
        center_momentum: float = 0.9,
        local_crops: int = 8,
        local_size: int = 96,
        local_scale: tuple[float, float] = (0.05, 0.4),
        freeze_last_layer: float = 0.01,
        norm_last_layer: bool = True,
    ):
        super().__init__()
        self.backbone = backbone
        self.views = multi_crop(views, local_crops, local_size, local_scale)
        self.head = DINOHead(backbone.embed_dim, out_dim, hidden_dim, bottleneck_dim, norm_last_layer=norm_last_layer)
        self.teacher = MomentumTeacher({"backbone": backbone, "head": self.head}, momentum)
        self.register_buffer("center", torch.zeros(out_dim))
        self.temps = (student_temp, warmup_teacher_temp, teacher_temp, teacher_temp_warmup)
        self.teacher_temp = warmup_teacher_temp
        self.center_momentum, self.freeze_last_layer = center_momentum, freeze_last_layer

    def on_step(self, progress: float) -> None:
        self.teacher_temp = teacher_temperature(progress, *self.temps[1:])
        self.teacher.set_progress(progress)

    def training_step(self, batch: Batch) -> dict:
        views = batch.views
        with torch.no_grad():
            teacher = self.teacher(torch.cat(views[:2])).chunk(2)
        student = list(self.head(self.backbone(torch.cat(views[:2]))).chunk(2))
        if len(views) > 2:
            student += self.head(self.backbone(torch.cat(views[2:]))).chunk(len(views) - 2)
        loss = dino_loss(student, list(teacher), self.center, self.temps[0], self.teacher_temp)
        with torch.no_grad():  # signs of collapse (train/health.py), and how far the centre moves
            signs = distillation_signs(
                loss, F.softmax((torch.cat(teacher).float() - self.center) / self.teacher_temp, -1)
            )
            center = update_center(self.center, torch.cat(teacher), self.center_momentum)
            signs["center_drift"] = (center - self.center).norm()
        self.center.copy_(center)
        return {
            "loss": loss,
            "teacher_temp": torch.tensor(self.teacher_temp),
            "momentum": torch.tensor(self.teacher.momentum),
            **signs,
        }

    def after_backward(self, progress: float) -> None:
        drop_last_layer_grads(self.head, progress, self.freeze_last_layer)

    def after_step(self, progress: float) -> None:
        self.teacher.update()
