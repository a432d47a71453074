"""MoCo: match a query to its key, encoded by a slowly moving copy of the network.

MoCo v2 (Chen et al., 2020), negatives from a queue of past keys:

    q = g(f(aug(x)));  k = g'(f'(aug(x)))       # f', g': momentum copies of f, g
    loss = info_nce(q, k, queue)                 # positive: k; negatives: the queue
    queue.enqueue(k);  f', g' <- m f' + (1 - m) f, g

MoCo v3 (Chen, Xie & He, 2021), no queue, a predictor, symmetric, momentum on a cosine schedule:

    q1, q2 = h(g(f(x1))), h(g(f(x2)));  k1, k2 = g'(f'(x1)), g'(f'(x2))
    loss = 2 tau (info_nce(q1, k2) + info_nce(q2, k1))   # negatives: the other keys of the batch

Batch-norm leakage (a query finding its key through shared batch statistics) is blocked by
shuffle-BN: the key encoder sees the batch shuffled and cut into ``bn_splits`` groups, each
normalised on its own, while the queries keep their order.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.loader import Batch
from ..data.views import ViewConfig
from ..ema import MomentumTeacher
from ..heads import mlp
from ..losses import info_nce
from ..memory import Queue
from .base import Method


def in_splits(net: nn.Module, x: torch.Tensor, splits: int) -> torch.Tensor:
    """``net`` on ``splits`` groups of ``x`` separately (each with its own batch statistics)."""
    return torch.cat([net(part) for part in x.chunk(splits)]) if splits > 1 else net(x)


class MoCoV2(Method):
    def __init__(
        self,
        backbone: nn.Module,
        views: ViewConfig,
        temperature: float = 0.2,
        queue_size: int = 65536,
        momentum: float = 0.999,
        hidden_dim: int = 2048,
        proj_dim: int = 128,
        bn_splits: int = 8,
    ):
        super().__init__()
        self.backbone, self.views = backbone, [views, views]
        self.projector = mlp(backbone.embed_dim, hidden_dim, proj_dim, 2, norm=False)
        self.key_encoder = MomentumTeacher(
            {"backbone": backbone, "projector": self.projector}, momentum, schedule="constant"
        )
        self.queue = Queue(queue_size, proj_dim)
        self.temperature, self.bn_splits = temperature, bn_splits

    def training_step(self, batch: Batch) -> dict:
        x1, x2 = batch.views
        q = in_splits(self.encoder(), x1, self.bn_splits)
        with torch.no_grad():
            order = torch.randperm(len(x2), device=x2.device)
            k = torch.empty(len(x2), q.shape[1], device=x2.device)
            k[order] = in_splits(self.key_encoder, x2[order], self.bn_splits).float()
        loss = info_nce(q, k, self.temperature, self.queue.keys.clone())
        self.queue.enqueue(F.normalize(k, dim=1))
        return {"loss": loss}

    def encoder(self) -> nn.Sequential:
        """Backbone and projector as one network (a view of them, not a copy)."""
        return nn.Sequential(self.backbone, self.projector)

    def after_step(self, progress: float) -> None:
        self.key_encoder.update()


class MoCoV3(Method):
    def __init__(
        self,
        backbone: nn.Module,
        views: ViewConfig,
        temperature: float = 0.2,
        momentum: float = 0.99,
        hidden_dim: int = 4096,
        proj_dim: int = 256,
        proj_layers: int = 3,
        predictor_bn: bool = True,
    ):
        """The heads default to the paper's ViT form; its ResNet form is ``proj_layers=2,
        predictor_bn=False`` (no BatchNorm on the predictor's output)."""
        super().__init__()
        self.backbone, self.views = backbone, [views, views]
        self.projector = mlp(backbone.embed_dim, hidden_dim, proj_dim, proj_layers, last_bn=True)
        self.predictor = mlp(proj_dim, hidden_dim, proj_dim, 2, last_bn=predictor_bn)
        self.momentum_encoder = MomentumTeacher({"backbone": backbone, "projector": self.projector}, momentum)
        self.temperature = temperature

    def on_step(self, progress: float) -> None:
        self.momentum_encoder.set_progress(progress)

    def training_step(self, batch: Batch) -> dict:
        x1, x2 = batch.views  # each view through the networks on its own: batch statistics per view
        q1, q2 = (self.predictor(self.projector(self.backbone(x))) for x in (x1, x2))
        with torch.no_grad():
            k1, k2 = (self.momentum_encoder(x) for x in (x1, x2))
        loss = 2 * self.temperature * (info_nce(q1, k2, self.temperature) + info_nce(q2, k1, self.temperature))
        return {"loss": loss, "momentum": torch.tensor(self.momentum_encoder.momentum)}

    def after_step(self, progress: float) -> None:
        self.momentum_encoder.update()
