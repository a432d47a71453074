"""SimCLR (Chen et al., 2020): two random views of each image should find each other among all
the views in the batch.

    h1, h2 = f(aug(x)), f(aug(x))          # backbone features
    z1, z2 = g(h1), g(h2)                  # projection head
    loss = nt_xent(z1, z2, temperature)    # the other view is the positive, the rest negatives
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..data.loader import Batch
from ..data.views import ViewConfig
from ..heads import mlp
from ..losses import nt_xent
from .base import Method


class SimCLR(Method):
    collapse_advice = (
        "SimCLR collapses when its negatives are too few or too easy: "
        "raise --batch-size or the temperature (--set method_args.temperature=0.5), or lower --lr"
    )

    def __init__(
        self,
        backbone: nn.Module,
        views: ViewConfig,
        temperature: float = 0.5,
        hidden_dim: int = 2048,
        proj_dim: int = 128,
        proj_layers: int = 2,
    ):
        super().__init__()
        self.backbone = backbone
        self.views = [views, views]
        self.projector = mlp(backbone.embed_dim, hidden_dim, proj_dim, proj_layers)
        self.temperature = temperature

    def training_step(self, batch: Batch) -> dict:
        z1, z2 = self.projector(self.backbone(torch.cat(batch.views))).chunk(2)  # one pass for both views
        return {"loss": nt_xent(z1, z2, self.temperature)}
