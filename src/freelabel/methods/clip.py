"""CLIP (Radford et al. 2021) and SigLIP (Zhai et al. 2023): predict the caption. An image tower and
a text tower map each image and its caption into one space where the pair is closer than any
mismatched pair of the batch.

    x = normalise(W_i f_image(view(image)))       # any freelabel backbone
    y = normalise(W_t f_text(caption))            # a text transformer (text.py)
    CLIP:   loss = clip_loss(x, y, t)             # symmetric InfoNCE; after each step t = min(t, ln 100)
    SigLIP: loss = siglip_loss(x, y, t, b)        # a sigmoid per pair; t = log 10, b = -10 at start

Either tower can be locked (frozen, kept in eval mode). LiT (Zhai et al. 2022) locks a pretrained
*image* tower and teaches a text tower to read it (``lock_image``, with a pretrained backbone);
the ``lit-emoji-captions`` recipe does the mirror image, locking the pretrained MiniLM *text* tower
(``text_tower: minilm, lock_text: true``) and teaching the image tower to speak its language. A
locked text tower's embeddings are cached per caption, so each caption is encoded once.

A trained run, loaded by :func:`freelabel.encoder.load_encoder`, has ``encode_image`` and ``encode_text``,
so it classifies by class names and retrieves like pretrained CLIPs do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.loader import Batch
from ..data.views import ViewConfig
from ..errors import DataError
from ..losses import clip_loss, siglip_loss
from ..text import TextTower
from .base import Method


class CLIP(Method):
    max_logit_scale: float | None = math.log(100)  # the temperature stays at least 1/100 (Radford et al.)

    def __init__(
        self,
        backbone: nn.Module,
        views: ViewConfig,
        embed_dim: int = 512,
        text_tower: str = "transformer",
        text_args: dict | None = None,
        lock_image: bool = False,
        lock_text: bool = False,
        temperature: float = 0.07,
    ):
        super().__init__()
        self.backbone = backbone
        self.views = [views]
        self.text = TextTower(text_tower, **(text_args or {}))
        self.image_proj = nn.Linear(backbone.embed_dim, embed_dim, bias=False)
        self.text_proj = nn.Linear(self.text.embed_dim, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)))
        self.locked = [m for m, lock in ((self.backbone, lock_image), (self.text, lock_text)) if lock]
        for m in self.locked:
            m.requires_grad_(False)
        self.cache: dict[str, torch.Tensor] = {}  # caption -> locked text tower's embedding
        self.train()

    def train(self, mode: bool = True) -> CLIP:
        super().train(mode)
        for m in self.locked:
            m.eval()  # locked towers keep their BatchNorm statistics and drop no units
        return self

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        if self.text not in self.locked:
            return self.text(texts)
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if new:
            with torch.no_grad():
                self.cache.update(zip(new, self.text(new).float()))
        return torch.stack([self.cache[t] for t in texts])

    def contrast(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": clip_loss(image, text, self.logit_scale), "temperature": self.logit_scale.detach().neg().exp()}

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Clamp the parameter, not the loss's use of it: at the cap its gradient can still bring it down."""
        if self.max_logit_scale is not None:
            self.logit_scale.clamp_(max=self.max_logit_scale)

    def training_step(self, batch: Batch) -> dict:
        if batch.texts is None:
            raise DataError(
                f"{type(self).__name__.lower()} learns from captions: give --data emoji-captions, a "
                "CSV/JSONL of image,caption, a folder with a .txt beside each image, or .tar shards"
            )
        return self.contrast(self.image_features(batch.views[0]), self.text_proj(self.text_features(batch.texts)))

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised views -> the shared space (not yet L2-normalised)."""
        return self.image_proj(self.backbone(x))

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        return F.normalize(self.text_proj(self.text(texts)).float(), dim=-1)


class SigLIP(CLIP):
    max_logit_scale = None  # the sigmoid loss needs no cap (Zhai et al. 2023)

    def __init__(
        self,
        backbone: nn.Module,
        views: ViewConfig,
        embed_dim: int = 512,
        text_tower: str = "transformer",
        text_args: dict | None = None,
        lock_image: bool = False,
        lock_text: bool = False,
        temperature: float = 0.1,
        bias: float = -10.0,
    ):
        super().__init__(backbone, views, embed_dim, text_tower, text_args, lock_image, lock_text, temperature)
        self.logit_bias = nn.Parameter(torch.tensor(bias))

    def contrast(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "loss": siglip_loss(image, text, self.logit_scale, self.logit_bias),
            "temperature": self.logit_scale.detach().neg().exp(),
            "bias": self.logit_bias.detach(),
        }
