"""MAE (He et al., 2022): hide most patches of an image and reconstruct their pixels.

mask = random 75% of the patches per image                  # made by the loader (RandomMasks)
z = f(x, mask)                                              # the encoder sees the visible patches only
p = decoder(z at visible places, mask tokens at hidden ones) # narrow ViT, its own sin-cos positions
t = patches(x), each normalised by its own mean and variance # norm_pix
loss = mean over hidden patches of mse(p, t)
"""

from __future__ import annotations

import io

import torch
import torch.nn as nn
from torchvision.utils import save_image

from ..config import ConfigError
from ..data.loader import Batch
from ..data.masking import RandomMasks, places
from ..data.views import ViewConfig, normalise
from ..heads import MaskedTokenDecoder
from ..losses import masked_patch_loss
from .base import Method


def vit_grid(backbone: nn.Module, method: str) -> tuple[int, int]:
    """The patch grid of a ViT backbone, or a message that names the fix."""
    if backbone.grid is None:
        raise ConfigError(
            f"{method} hides patches and needs a ViT backbone, e.g. --backbone vit_tiny "
            "--set backbone.args.patch_size=4 at 28 px"
        )
    return backbone.grid


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """Images ``[B, C, H, W]`` -> patches ``[B, N, p*p*C]`` in grid order (row-major), pixels (row, col, channel)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, p: int, c: int, grid: tuple[int, int]) -> torch.Tensor:
    """The inverse of :func:`patchify`."""
    b, (rows, cols) = patches.shape[0], grid
    return patches.reshape(b, rows, cols, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, rows * p, cols * p)


class MAE(Method):
    transformers_class = "ViTMAEModel"  # what `freelabel export --format transformers` writes, where it fits

    def __init__(
        self,
        backbone: nn.Module,
        views: ViewConfig,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix: bool = True,
    ):
        super().__init__()
        self.backbone = backbone
        self.views = [views]
        self.grid = vit_grid(backbone, "mae")
        self.masks = RandomMasks(self.grid, mask_ratio)
        self.patch, self.channels = backbone.patch_size, backbone.in_chans
        self.norm_pix = norm_pix
        self.decoder = MaskedTokenDecoder(
            backbone.embed_dim,
            self.grid,
            decoder_dim,
            decoder_depth,
            decoder_heads,
            out_dim=self.patch**2 * self.channels,
        )

    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Predicted pixels ``[B, N_hidden, p*p*C]`` of the hidden patches (``mask`` True), in grid order."""
        z = self.backbone.forward_visible(x, mask)
        return self.decoder(z, places(~mask), places(mask))

    def training_step(self, batch: Batch) -> dict:
        x, mask = batch.views[0], batch.masks["mask"]
        pred = torch.zeros(*mask.shape, self.patch**2 * self.channels, device=x.device)
        pred[mask] = self.reconstruct(x, mask).float().flatten(0, 1)
        return {"loss": masked_patch_loss(pred, patchify(x.float(), self.patch), mask, self.norm_pix)}

    @torch.no_grad()
    def artefacts(self, batch: Batch) -> dict[str, bytes]:
        """``reconstruction.png``: rows of originals, the visible patches (hidden ones grey) and the
        reconstruction (predicted hidden patches, in each patch's true mean and spread when ``norm_pix``,
        pasted among the visible ones), for 16 images with a fresh mask."""
        view = self.views[0]
        x = normalise(batch.images[:16], view)
        mask = self.masks(len(x), torch.Generator().manual_seed(0))["mask"].to(x.device)
        training = self.training
        self.eval()
        pred = self.reconstruct(x, mask).float()
        self.train(training)
        patches = patchify(x.float(), self.patch)
        if self.norm_pix:
            hidden = patches[mask].view_as(pred)
            pred = pred * (hidden.var(-1, keepdim=True) + 1e-6).sqrt() + hidden.mean(-1, keepdim=True)
        filled, shown = patches.clone(), patches.clone()
        filled[mask] = pred.flatten(0, 1)
        mean = torch.tensor(view.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(view.std, device=x.device).view(1, -1, 1, 1)
        shown[mask] = (
            ((0.5 - mean) / std).expand(1, x.shape[1], 1, 1).flatten().repeat(self.patch**2)
        )  # hidden: mid-grey
        rows = [unpatchify(t, self.patch, self.channels, self.grid) * std + mean for t in (patches, shown, filled)]
        png = io.BytesIO()
        save_image(torch.cat(rows).clamp(0, 1), png, format="png", nrow=len(x), padding=1)
        return {"reconstruction.png": png.getvalue()}
