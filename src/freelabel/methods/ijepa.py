"""I-JEPA (Assran et al., 2023): from one large block of an image, predict the *representations* of a
few other blocks, as a slowly moving target encoder gives them; no pixels, no augmented pairs.

    context, targets = multi-block masks                # made by the loader (MultiBlockMasks): 1 context
                                                        # block, M=4 target blocks cut out of it
    h = layer_norm(f'(x))                               # target encoder: EMA of f, the whole image
    z = f(x, hide everything but the context)           # context encoder: the context patches only
    for each target block i:
        p_i = predictor(z, mask tokens at block i)      # narrow ViT with sin-cos positions
    loss = mean over blocks of smooth_l1(p_i, h at block i)
    f' <- m f' + (1 - m) f;  m: 0.996 -> 1 linearly
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ConfigError
from ..data.loader import Batch
from ..data.masking import MultiBlockMasks, places
from ..data.views import ViewConfig
from ..ema import MomentumTeacher
from ..heads import MaskedTokenDecoder
from ..losses import latent_prediction_loss
from .base import Method
from .mae import vit_grid


class IJEPA(Method):
    def __init__(
        self,
        backbone: nn.Module,
        views: ViewConfig,
        targets: int = 4,
        target_scale: tuple[float, float] = (0.15, 0.2),
        target_aspect: tuple[float, float] = (0.75, 1.5),
        context_scale: tuple[float, float] = (0.85, 1.0),
        predictor_dim: int = 384,
        predictor_depth: int = 12,
        predictor_heads: int = 12,
        momentum: float = 0.996,
        loss: str = "smooth_l1",
    ):
        super().__init__()
        if loss not in ("smooth_l1", "l2"):
            raise ConfigError(f"ijepa's loss is 'smooth_l1' or 'l2', not {loss!r}")
        self.backbone = backbone
        self.views = [views]
        grid = vit_grid(backbone, "ijepa")
        self.masks = MultiBlockMasks(grid, targets, tuple(target_scale), tuple(target_aspect), tuple(context_scale))
        self.predictor = MaskedTokenDecoder(backbone.embed_dim, grid, predictor_dim, predictor_depth, predictor_heads)
        self.target = MomentumTeacher({"backbone": backbone}, momentum, schedule="linear")
        self.loss = loss

    def on_step(self, progress: float) -> None:
        self.target.set_progress(progress)

    def training_step(self, batch: Batch) -> dict:
        x, masks = batch.views[0], batch.masks
        hidden, at = masks["context"], masks["targets"]  # bool [B, N] (True: not context), long [B, M, K]
        b, m, k = at.shape
        with torch.no_grad():
            h = self.target["backbone"].forward_tokens(x)
            h = h.gather(1, at.flatten(1).unsqueeze(-1).expand(-1, -1, h.shape[-1])).view(b * m, k, -1)
        z = self.backbone.forward_visible(x, hidden)
        pred = self.predictor(z.repeat_interleave(m, 0), places(~hidden).repeat_interleave(m, 0), at.flatten(0, 1))
        return {"loss": latent_prediction_loss(pred, h, self.loss), "momentum": torch.tensor(self.target.momentum)}

    def after_step(self, progress: float) -> None:
        self.target.update()
