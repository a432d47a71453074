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

Schedules (teacher temperature, momentum, frozen last layer) are DINO's: this class extends it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from ..backbones import BackboneError
from ..config import ConfigError
from ..data.masking import block_masks
from ..data.views import ViewConfig
from ..dist import world
from ..ema import frozen_copy
from ..heads import DINOHead
from ..losses import cross_view_entropy, gram_loss, ibot_patch_loss, koleo, sinkhorn_knopp, update_center
from .dino import DINO


class DINOv2(DINO):
    def __init__(self, backbone: nn.Module, views: ViewConfig, out_dim: int = 65536, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, student_temp: float = 0.1, teacher_temp: float = 0.07,
                 warmup_teacher_temp: float = 0.04, teacher_temp_warmup: float = 0.3, momentum: float = 0.992,
                 center_momentum: float = 0.9, local_crops: int = 8, local_size: int = 96,
                 local_scale: tuple[float, float] = (0.05, 0.32), freeze_last_layer: float = 0.01,
                 norm_last_layer: bool = True, centering: str = "center", ibot_weight: float = 1.0,
                 separate_ibot_head: bool = False, ibot_out_dim: int = 65536, mask_probability: float = 0.5,
                 mask_ratio: tuple[float, float] = (0.1, 0.5), koleo_weight: float = 0.1, gram_weight: float = 0.0,
                 gram_start: float = 0.0, gram_checkpoint: str = ""):  # fmt: skip
        if not getattr(backbone, "is_vit", False):
            raise BackboneError("dinov2 masks patch tokens: use a ViT backbone (vit_tiny, vit_small, ...)")
        if centering not in ("center", "sinkhorn"):
            raise ConfigError(f"method_args.centering must be center or sinkhorn, got {centering!r}")
        super().__init__(backbone, views, out_dim, hidden_dim, bottleneck_dim, student_temp, teacher_temp,
                         warmup_teacher_temp, teacher_temp_warmup, momentum, center_momentum, local_crops, local_size,
                         local_scale, freeze_last_layer, norm_last_layer)  # fmt: skip
        self.mask_token = nn.Parameter(torch.zeros(backbone.embed_dim))
        self.ibot_head = (DINOHead(backbone.embed_dim, ibot_out_dim, hidden_dim, bottleneck_dim,
                                   norm_last_layer=norm_last_layer) if separate_ibot_head else None)  # fmt: skip
        if separate_ibot_head:
            self.teacher = frozen_copy(self.student())  # DINO's teacher, with the iBOT head
        self.register_buffer("patch_center", torch.zeros(ibot_out_dim if separate_ibot_head else out_dim))
        self.centering, self.ibot_weight, self.koleo_weight = centering, ibot_weight, koleo_weight
        self.mask_probability, self.mask_ratio = mask_probability, tuple(mask_ratio)
        self.gram_weight, self.gram_start, self.gram_on = gram_weight, gram_start, False
        if gram_weight > 0:
            self.gram_teacher = frozen_copy(backbone)
            self.register_buffer("gram_ready", torch.tensor(bool(gram_checkpoint)))
            if gram_checkpoint:
                try:
                    self.gram_teacher.load_state_dict(teacher_backbone_state(gram_checkpoint))
                except RuntimeError as e:
                    raise ConfigError(f"gram_checkpoint {gram_checkpoint} does not fit this backbone: "
                                      f"{str(e).splitlines()[0]}") from None  # fmt: skip
        self.train()

    def train(self, mode: bool = True) -> DINOv2:
        """The student trains; the teachers stay in eval mode (no drop-path in them, as in DINOv2)."""
        super().train(mode)
        for teacher in (self.teacher, getattr(self, "gram_teacher", None)):
            if teacher is not None:
                teacher.eval()
        return self

    def student(self) -> nn.ModuleDict:
        """Backbone and heads as one network (a view of them, not a copy); the teacher is its EMA."""
        ibot = getattr(self, "ibot_head", None)  # None also while DINO's constructor makes the first teacher
        heads = {"ibot_head": ibot} if ibot is not None else {}
        return nn.ModuleDict({"backbone": self.backbone, "head": self.head, **heads})

    def on_step(self, progress: float) -> None:
        super().on_step(progress)
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

    def training_step(self, batch: dict) -> dict:
        views = batch["views"]
        glob = torch.cat(views[:2])
        teacher = self.teacher
        with torch.no_grad():
            t_cls, t_patch = teacher["backbone"].forward_tokens(glob, pooled=True)
        side = int(t_patch.shape[1] ** 0.5)  # square views: a side x side grid of patches
        g = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))) + world()[0])  # other masks per process
        masks = block_masks(len(glob), (side, side), self.mask_ratio, self.mask_probability, generator=g)
        masks = masks.to(glob.device)
        s_cls, s_patch = self.backbone.forward_tokens(glob, masks, self.mask_token, pooled=True)

        with torch.no_grad():
            dino_targets = self.targets(teacher["head"](t_cls), self.center).chunk(2)
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
        out["loss"] = out["dino"] + self.ibot_weight * out["ibot"] + self.koleo_weight * out["koleo"] + \
            self.gram_weight * out["gram"]  # fmt: skip
        return {**out, "teacher_temp": torch.tensor(self.teacher_temp), "momentum": torch.tensor(self.momentum)}

    def after_backward(self, progress: float) -> None:
        super().after_backward(progress)
        if progress < self.freeze_last_layer and self.ibot_head is not None:
            for p in self.ibot_head.last_layer.parameters():
                p.grad = None


def teacher_backbone_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The backbone weights of a DINO-family teacher in a checkpoint folder (``checkpoints/step-N``),
    or in the newest checkpoint of a run directory; a checkpoint without a teacher gives its student."""
    from ..run import latest_checkpoint

    path = Path(path)
    ckpt = path if (path / "model.safetensors").is_file() else latest_checkpoint(path)
    if ckpt is None:
        raise ConfigError(f"gram_checkpoint {path} holds no checkpoint (a run directory or its checkpoints/step-N)")
    state = load_file(str(ckpt / "model.safetensors"))
    for prefix in ("teacher.backbone.", "teacher.0.", "backbone."):
        found = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        if found:
            return found
    raise ConfigError(f"{ckpt} holds no backbone weights to anchor the Gram matrices to")
