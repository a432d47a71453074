"""Barlow Twins (Zbontar et al., 2021): the cross-correlation matrix between the embeddings of two
views, standardised over the batch, should be the identity: invariant, and without redundancy.

    z1, z2 = g(f(x1)), g(f(x2))
    c = standardise(z1).T @ standardise(z2) / N
    loss = sum_i (1 - c_ii)^2 + lambda * sum_{i != j} c_ij^2
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..data.loader import Batch
from ..data.views import ViewConfig
from ..heads import mlp
from ..losses import barlow_twins_loss
from .base import Method


class BarlowTwins(Method):
    def __init__(
        self,
        backbone: nn.Module,
        views: ViewConfig,
        lambd: float = 0.0051,
        hidden_dim: int = 8192,
        proj_dim: int = 8192,
        proj_layers: int = 3,
    ):
        super().__init__()
        self.backbone, self.views = backbone, [views, views]
        self.projector = mlp(backbone.embed_dim, hidden_dim, proj_dim, proj_layers)
        self.lambd = lambd

    def training_step(self, batch: Batch) -> dict:
        z1, z2 = self.projector(self.backbone(torch.cat(batch.views))).chunk(2)
        return {"loss": barlow_twins_loss(z1, z2, self.lambd)}
