"""DINOv2 (Oquab et al., 2023): DINO + iBOT's masked-token loss + the KoLeo regulariser, with
Sinkhorn-Knopp centring as an option; and DINOv3's Gram anchoring (Siméoni et al., 2025).

    t_cls, t_patch = teacher(g1, g2)                          # global views, unmasked; EMA of the student
    m = block_masks(g1, g2)                                   # half the images: 10-50% of patches hidden
    s_cls, s_patch = student(g1, g2, hidden patches -> mask token);  s_loc = student(locals)
    P = centre(t) | sinkhorn_knopp(t)                         # the teacher's target distributions
    loss = H(P(head(t_cls)), head([s_cls, s_loc]))            # DINO on the class token, views i != j
         + H(P(ibot_head(t_patch[m])), ibot_head(s_patch[m])) # iBOT: predict the hidden patches' targets
         + 0.1 * KoLeo(s_cls)                                 # spread each view's class tokens apart
         + w * |Gram(s_patch) - Gram(gram_teacher(g1, g2))|^2 # Gram anchoring, after `gram_start`
    gram_teacher: a frozen copy of the EMA teacher made at `gram_start` (or read from `gram_checkpoint`)

The masks come from the loader (:class:`~freelabel.data.masking.BlockMasks`), so a resumed run draws
the same; DINO's parts (views, head, teacher temperature, frozen last layer) are composed, not inherited.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from ..backbones import BackboneError
from ..config import ConfigError
from ..data.loader import Batch
from ..data.masking import BlockMasks
from ..data.views import ViewConfig
from ..ema import MomentumTeacher, frozen_copy
from ..heads import DINOHead
from ..losses import (
    cross_view_entropy,
    distillation_signs,
    gram_loss,
    ibot_patch_loss,
    koleo,
    sinkhorn_knopp,
    update_center,
)
from .base import Method
from .dino import COLLAPSE_ADVICE, drop_last_layer_grads, multi_crop, teacher_temperature


class DINOv2(Method):
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
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        teacher_temp_warmup: float = 0.3,
        momentum: float = 0.992,
        center_momentum: float = 0.9,
        local_crops: int = 8,
        local_size: int = 96,
        local_scale: tuple[float, float] = (0.05, 0.32),
        freeze_last_layer: float = 0.01,
        norm_last_layer: bool = True,
        centering: str = "center",
        ibot_weight: float = 1.0,
        separate_ibot_head: bool = False,
        ibot_out_dim: int = 65536,
        mask_probability: float = 0.5,
        mask_ratio: tuple[float, float] = (0.1, 0.5),
        koleo_weight: float = 0.1,
        gram_weight: float = 0.0,
        gram_start: float = 0.0,
        gram_checkpoint: str = "",
    ):
        super().__init__()
        if backbone.grid is None:
            raise BackboneError("dinov2 masks patch tokens: use a ViT backbone (vit_tiny, vit_small, ...)")
        if centering not in ("center", "sinkhorn"):
            raise ConfigError(f"method_args.centering must be center or sinkhorn, got {centering!r}")
        self.backbone = backbone
        self.views = multi_crop(views, local_crops, local_size, local_scale)
        self.masks = BlockMasks(backbone.grid, tuple(mask_ratio), mask_probability)
        shape = dict(hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim, norm_last_layer=norm_last_layer)
        self.head = DINOHead(backbone.embed_dim, out_dim, **shape)
        self.mask_token = nn.Parameter(torch.zeros(backbone.embed_dim))
        self.ibot_head = DINOHead(backbone.embed_dim, ibot_out_dim, **shape) if separate_ibot_head else None
        student = {"backbone": backbone, "head": self.head} | (
            {"ibot_head": self.ibot_head} if separate_ibot_head else {}
        )
        self.teacher = MomentumTeacher(student, momentum)  # the one teacher, with the iBOT head where there is one
        self.register_buffer("center", torch.zeros(out_dim))
        self.register_buffer("patch_center", torch.zeros(ibot_out_dim if separate_ibot_head else out_dim))
        self.temps = (student_temp, warmup_teacher_temp, teacher_temp, teacher_temp_warmup)
        self.teacher_temp = warmup_teacher_temp
        self.center_momentum, self.freeze_last_layer = center_momentum, freeze_last_layer
        self.centering, self.ibot_weight, self.koleo_weight = centering, ibot_weight, koleo_weight
        self.gram_weight, self.gram_start, self.gram_on = gram_weight, gram_start, False
        if gram_weight > 0:
            self.gram_teacher = frozen_copy(backbone)
            self.register_buffer("gram_ready", torch.tensor(bool(gram_checkpoint)))
            if gram_checkpoint:
                try:
                    self.gram_teacher.load_state_dict(teacher_backbone_state(gram_checkpoint))
                except RuntimeError as e:
                    raise ConfigError(
                        f"gram_checkpoint {gram_checkpoint} does not fit this backbone: {str(e).splitlines()[0]}"
                    ) from None
        self.train()

    def train(self, mode: bool = True) -> DINOv2:
        """The student trains; the teachers stay in eval mode (no drop-path in them, as in DINOv2)."""
        super().train(mode)
        self.teacher.eval()
        if self.gram_weight > 0:
            self.gram_teacher.eval()
        return self

    def on_step(self, progress: float) -> None:
        self.teacher_temp = teacher_temperature(progress, *self.temps[1:])
        self.teacher.set_progress(progress)
        self.gram_on = self.gram_weight > 0 and progress >= self.gram_start
        if self.gram_on and not self.gram_ready:  # the Gram teacher: the EMA teacher as it is now
            self.gram_teacher.load_state_dict(self.teacher["backbone"].state_dict())
            self.gram_ready.fill_(True)

    def targets(self, logits: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        """The teacher's target distributions: centred and sharpened (updating ``center``), or Sinkhorn-Knopp."""
        if self.centering == "sinkhorn":
            return sinkhorn_knopp(logits, self.teacher_temp)
        probs = F.softmax((logits.float() - center) / self.teacher_temp, dim=-1)
        center.copy_(update_center(center, logits, self.center_momentum))
        return probs

    def training_step(self, batch: Batch) -> dict:
        views, masks = batch.views, batch.masks["mask"]  # masks: [2B, N], the global views stacked
        glob = torch.cat(views[:2])
        teacher = self.teacher
        with torch.no_grad():
            t_cls, t_patch = teacher["backbone"].forward_pooled_tokens(glob)  # the teacher sees every patch
        s_cls, s_patch = self.backbone.forward_masked(glob, masks, self.mask_token)

        with torch.no_grad():
            before = self.center.clone()
            dino_targets = self.targets(teacher["head"](t_cls), self.center).chunk(2)
            drift = (self.center - before).norm()
            t_ibot_head = teacher["ibot_head"] if "ibot_head" in teacher else teacher["head"]
            ibot_targets = self.targets(t_ibot_head(t_patch[masks]), self.patch_center)
        student = self.head(s_cls).chunk(2)
        if len(views) > 2:
            student += self.head(self.backbone(torch.cat(views[2:]))).chunk(len(views) - 2)
        ibot_head = self.ibot_head if self.ibot_head is not None else self.head
        out = {
            "dino": cross_view_entropy(list(student), list(dino_targets), self.temps[0]),
            "ibot": ibot_patch_loss(ibot_head(s_patch[masks]), ibot_targets, masks, self.temps[0]),
            "koleo": sum(koleo(c) for c in s_cls.chunk(2)),  # each view apart: not an image's own twin (DINOv2)
            "gram": torch.zeros((), device=glob.device),
        }
        if self.gram_on:
            with torch.no_grad():
                anchor = self.gram_teacher.forward_tokens(glob)
            out["gram"] = gram_loss(s_patch, anchor)
        out["loss"] = (
            out["dino"]
            + self.ibot_weight * out["ibot"]
            + self.koleo_weight * out["koleo"]
            + self.gram_weight * out["gram"]
        )
        signs = distillation_signs(out["dino"], torch.cat(dino_targets))  # of collapse (train/health.py)
        signs |= {"center_drift": drift} if self.centering == "center" else {}
        return {
            **out,
            **signs,
            "teacher_temp": torch.tensor(self.teacher_temp),
            "momentum": torch.tensor(self.teacher.momentum),
        }

    def after_backward(self, progress: float) -> None:
        drop_last_layer_grads(self.head, progress, self.freeze_last_layer)
        if self.ibot_head is not None:
            drop_last_layer_grads(self.ibot_head, progress, self.freeze_last_layer)

    def after_step(self, progress: float) -> None:
        self.teacher.update()


def teacher_backbone_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The backbone weights of a DINO-family teacher in a checkpoint folder (``checkpoints/step-N``),
    or in the newest checkpoint of a run directory; a checkpoint without a teacher gives its student."""
    from ..run import latest_checkpoint

    path = Path(path)
    ckpt = path if (path / "model.safetensors").is_file() else latest_checkpoint(path)
    if ckpt is None:
        raise ConfigError(f"gram_checkpoint {path} holds no checkpoint (a run directory or its checkpoints/step-N)")
    state = load_file(str(ckpt / "model.safetensors"))
    for prefix in ("teacher.backbone.", "backbone."):
        found = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        if found:
            return found
    raise ConfigError(f"{ckpt} holds no backbone weights to anchor the Gram matrices to")
