"""RotNet (Gidaris, Singh & Komodakis, 2018): predict by how much an image was rotated.

    x_r = rot90(aug(x), r)  for r in {0, 1, 2, 3}      # 0, 90, 180, 270 degrees, all four per image
    loss = cross_entropy(c(f(x_r)), r)                  # f: backbone, c: 4-way classifier

To recognise the rotation the network must find the objects and which way up they stand. With
``per_image`` below 4 each image appears in that many of its rotations, drawn at random (a cheaper
step, as in later work that rotates only part of each batch).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigError
from ..data.loader import Batch
from ..data.views import ViewConfig
from ..heads import mlp
from .base import Method


def rotation_batch(x: torch.Tensor, per_image: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image of ``x [B, C, H, W]`` in ``per_image`` distinct rotations (all four, or a random
    subset) -> (rotated images ``[B * per_image, C, H, W]``, labels: quarter turns counter-clockwise)."""
    b = len(x)
    if per_image == 4:
        turns = torch.arange(4, device=x.device).repeat_interleave(b)
        return torch.cat([torch.rot90(x, r, dims=(2, 3)) for r in range(4)]), turns
    chosen = torch.rand(b, 4, device=x.device).argsort(1)[:, :per_image]  # [B, per_image] distinct turns
    picked = [(chosen == r).any(1) for r in range(4)]
    rotated = torch.cat([torch.rot90(x[p], r, dims=(2, 3)) for r, p in enumerate(picked)])
    turns = torch.cat([torch.full((int(p.sum()),), r, device=x.device) for r, p in enumerate(picked)])
    return rotated, turns


class Rotation(Method):
    def __init__(self, backbone: nn.Module, views: ViewConfig, per_image: int = 4, hidden_dim: int = 0):
        super().__init__()
        if per_image not in (1, 2, 3, 4):
            raise ConfigError(f"rotation's per_image (rotations of each image) is 1, 2, 3 or 4, not {per_image}")
        self.backbone = backbone
        self.views = [views]
        self.per_image = per_image
        # RotNet's classifier on the backbone's pooled features: linear, or an MLP with hidden_dim
        self.classifier = mlp(backbone.embed_dim, hidden_dim, 4, 2) if hidden_dim else nn.Linear(backbone.embed_dim, 4)

    def training_step(self, batch: Batch) -> dict:
        x, turns = rotation_batch(batch.views[0], self.per_image)
        logits = self.classifier(self.backbone(x))
        return {"loss": F.cross_entropy(logits.float(), turns), "accuracy": (logits.argmax(1) == turns).float().mean()}
