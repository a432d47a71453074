"""VICReg (Bardes, Ponce & LeCun, 2022): variance, invariance, covariance.

z1, z2 = g(f(x1)), g(f(x2))
loss = 25 * mse(z1, z2)                          # invariance
     + 25 * mean(relu(1 - std(z)))               # variance: every dimension keeps spreading
     + 1  * sum(offdiag(cov(z))^2) / d           # covariance: dimensions decorrelate
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..data.loader import Batch
from ..data.views import ViewConfig
from ..heads import mlp
from ..losses import vicreg_loss
from .base import Method


class VICReg(Method):
    def __init__(
        self,
        backbone: nn.Module,
        views: ViewConfig,
        sim_weight: float = 25.0,
        var_weight: float = 25.0,
        cov_weight: float = 1.0,
        hidden_dim: int = 8192,
        proj_dim: int = 8192,
        proj_layers: int = 3,
    ):
        super().__init__()
        self.backbone, self.views = backbone, [views, views]
        self.projector = mlp(backbone.embed_dim, hidden_dim, proj_dim, proj_layers)
        self.weights = (sim_weight, var_weight, cov_weight)

    def training_step(self, batch: Batch) -> dict:
        z1, z2 = self.projector(self.backbone(torch.cat(batch.views))).chunk(2)
        return {"loss": vicreg_loss(z1, z2, *self.weights)}
