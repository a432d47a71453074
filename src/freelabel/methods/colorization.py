"""Colorization (Zhang, Isola & Efros, 2016): from the lightness of an image, predict its colour.

    L, ab = lab(aug(x))                                  # CIE Lab: lightness L, chroma ab
    z = up(head(f(L)))                                   # scores over Q ab bins per place, at 1/4 size
    y = soft_encode(ab)                                  # 5 nearest bins, Gaussian weights
    p~ = prior over bins (counted from the data seen)    # the soft targets so far
    w = ((1 - lam) p~ + lam / Q)^-1, scaled so E_p~[w] = 1     # rare, saturated colours count more
    loss = mean over places of  w[argmax y] * H(y, softmax(z))
    regression instead:  loss = mse(up(head(f(L))), ab / 110)
    colour = annealed_mean(z, T=0.38)                    # between the mean and the mode

The backbone sees the lightness alone, also when it is evaluated: :class:`LightnessInput` wraps it,
so that it takes the usual normalised RGB views (k-NN, the linear probe) and keeps only their L
(grey images work too: their L is their grey level).
"""

from __future__ import annotations

import io
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.utils import save_image

from ..backbones import InputTransform, build_backbone
from ..config import ConfigError
from ..data.colour import ab_bins, annealed_mean, lab_to_rgb, rgb_to_lab, soft_encode
from ..data.loader import Batch
from ..data.sources import DataError
from ..data.views import ViewConfig, normalise
from ..losses import rebalanced_cross_entropy, rebalancing_weights, update_histogram
from .base import Method


class LightnessInput(InputTransform):
    """A one-channel backbone behind a door that lets only lightness through: it takes RGB views
    normalised with ``mean``/``std`` and gives the backbone their CIE L, scaled to [-1, 1]."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__(net, in_chans=3)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def lab(self, x: torch.Tensor) -> torch.Tensor:
        """CIE Lab of normalised RGB views, in float32 even under autocast."""
        with torch.autocast(x.device.type, enabled=False):
            return rgb_to_lab((x.float() * self.std + self.mean).clamp(0, 1))

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The lightness of the views."""
        return (self.lab(x)[:, :1] / 50 - 1).to(x.dtype)


class Colorization(Method):
    @classmethod
    def make_backbone(cls, name: str, in_chans: int, views: ViewConfig, **args) -> nn.Module:
        if in_chans != 3:
            raise DataError(
                "colorization needs colour images and this data is grey (1 channel): use --data emoji "
                "(scripts/setup.sh installs it) or a folder of colour images"
            )
        return LightnessInput(build_backbone(name, 1, views.size, **args), views.mean, views.std)

    def __init__(
        self,
        backbone: LightnessInput,
        views: ViewConfig,
        loss: str = "classification",
        bin_spacing: float = 10.0,
        rebalance: float = 0.5,
        temperature: float = 0.38,
        hidden_dim: int = 256,
    ):
        super().__init__()
        if loss not in ("classification", "regression"):
            raise ConfigError(f"colorization's loss is 'classification' or 'regression', not {loss!r}")
        self.backbone = backbone
        self.views = [views]
        self.loss, self.rebalance, self.temperature = loss, rebalance, temperature
        self.out_size = max(1, views.size // 4)  # the paper predicts at a quarter of the input's side
        self.register_buffer("bins", ab_bins(bin_spacing).clone())
        self.register_buffer("counts", torch.zeros(len(self.bins)))  # the soft targets seen, per bin
        out = len(self.bins) if loss == "classification" else 2
        self.head = nn.Sequential(  # scores per bin (or ab) at every place of the backbone's grid
            nn.Conv2d(backbone.embed_dim, hidden_dim, 1, bias=False),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, out, 1),
        )

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Scores over the bins (or ab / 110 for regression) ``[B, Q or 2, S/4, S/4]`` from views ``x``,
        bilinearly upsampled from the backbone's grid."""
        tokens = self.backbone.forward_tokens(x)
        side = math.isqrt(tokens.shape[1])
        out = self.head(tokens.transpose(1, 2).reshape(len(x), -1, side, side))
        return F.interpolate(out, size=self.out_size, mode="bilinear") if out.shape[-1] != self.out_size else out

    def training_step(self, batch: Batch) -> dict:
        x = batch.views[0]
        out = self.predict(x).float()
        ab = F.adaptive_avg_pool2d(self.backbone.lab(x)[:, 1:], self.out_size)  # the true colour, same grid
        if self.loss == "regression":
            return {"loss": F.mse_loss(out, ab / 110)}
        with torch.autocast(x.device.type, enabled=False):
            target = soft_encode(ab, self.bins)
        self.counts.copy_(update_histogram(self.counts, target))
        return {"loss": rebalanced_cross_entropy(out, target, rebalancing_weights(self.counts, self.rebalance))}

    @torch.no_grad()
    def colourise(self, x: torch.Tensor) -> torch.Tensor:
        """RGB ``[B, 3, S, S]`` in [0, 1]: the lightness of views ``x`` with the predicted colour."""
        out = self.predict(x).float()
        ab = out * 110 if self.loss == "regression" else annealed_mean(out, self.bins, self.temperature)
        lab = self.backbone.lab(x)
        return lab_to_rgb(torch.cat([lab[:, :1], F.interpolate(ab, size=x.shape[-2:], mode="bilinear")], 1))

    def artefacts(self, batch: Batch) -> dict[str, bytes]:
        """``colorization.png``: rows of input lightness, predicted colour and true colour."""
        x = normalise(batch.images[:16], self.views[0])
        training = self.training
        self.eval()
        predicted = self.colourise(x)
        self.train(training)
        lab = self.backbone.lab(x)
        grey = lab_to_rgb(torch.cat([lab[:, :1], torch.zeros_like(lab[:, 1:])], 1))
        png = io.BytesIO()
        save_image(torch.cat([grey, predicted, lab_to_rgb(lab)]), png, format="png", nrow=len(x), padding=1)
        return {"colorization.png": png.getvalue()}
