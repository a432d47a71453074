"""BYOL (Grill et al., 2020): predict, from one view, a slowly moving target network's embedding of
the other view; no negatives.

    p1, p2 = q(g(f(x1))), q(g(f(x2)))               # online: backbone f, projector g, predictor q
    z1, z2 = g'(f'(x1)), g'(f'(x2))                 # target: EMA of f, g (no gradient)
    loss = mse(p1, z2) + mse(p2, z1)                # mse(p, z) = 2 - 2 cos(p, z)
    f', g' <- m f' + (1 - m) (f, g);  m: 0.996 -> 1 along a cosine
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from ..data.loader import Batch
from ..data.views import ViewConfig
from ..ema import MomentumTeacher
from ..heads import mlp
from ..losses import normalized_mse
from .base import Method


class BYOL(Method):
    collapse_advice = (
        "a BYOL target that follows the online network too closely collapses with it: "
        "raise its momentum (--set method_args.momentum=0.996), or lower --lr"
    )

    def __init__(
        self,
        backbone: nn.Module,
        views: ViewConfig,
        momentum: float = 0.996,
        hidden_dim: int = 4096,
        proj_dim: int = 256,
        asymmetric: bool = True,
    ):
        super().__init__()
        self.backbone = backbone
        # The paper's views differ: blur always in the first, rarely in the second, which solarizes.
        second = dataclasses.replace(views, blur=0.1 * (views.blur > 0), solarize=0.2) if asymmetric else views
        self.views = [dataclasses.replace(views, blur=1.0 * (views.blur > 0)) if asymmetric else views, second]
        self.projector = mlp(backbone.embed_dim, hidden_dim, proj_dim, 2)
        self.predictor = mlp(proj_dim, hidden_dim, proj_dim, 2)
        self.target = MomentumTeacher({"backbone": self.backbone, "projector": self.projector}, momentum)

    def on_step(self, progress: float) -> None:
        self.target.set_progress(progress)

    def training_step(self, batch: Batch) -> dict:
        x1, x2 = batch.views  # each view through the networks on its own: batch statistics per view
        p1, p2 = (self.predictor(self.projector(self.backbone(x))) for x in (x1, x2))
        with torch.no_grad():
            z1, z2 = (self.target(x) for x in (x1, x2))
        return {"loss": normalized_mse(p1, z2) + normalized_mse(p2, z1), "momentum": torch.tensor(self.target.momentum)}

    def after_step(self, progress: float) -> None:
        self.target.update()
