"""Batched random views: every augmentation of SimCLR-style recipes on a whole batch at once.

One :class:`Views` call turns ``uint8 [B, C, H, W]`` images into normalised ``float [B, C, S, S]``
views on the images' device. Each sample gets its own random parameters, drawn on the CPU from a
``torch.Generator``, so a seed fixes the result on any device. Random-resized-crop and flip are a
single ``grid_sample`` with a per-sample affine grid (for images held in memory; files are cropped
from the whole image where they are decoded, :mod:`freelabel.data.crops`); colour jitter, grey, blur and solarize are
per-sample blends, so the cost is a few batched tensor ops rather than a Python loop per image.

The jitter order is fixed (brightness, contrast, saturation, hue) where torchvision draws a random
order per image; hue is rotated in YIQ space, a linear approximation of the HSV hue shift.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import ViewConfig

# ITU-R 601 luma and the YIQ transform used for the hue rotation
_LUMA = (0.299, 0.587, 0.114)
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _coin(g: torch.Generator, n: int, p: float) -> torch.Tensor:
    return torch.rand(n, generator=g) < p


def crop_boxes(g: torch.Generator, n: int, scale: tuple[float, float], ratio: tuple[float, float]) -> torch.Tensor:
    """Per-sample crop boxes ``[n, 4]`` as (centre x, centre y, width, height), fractions of the image."""
    area = _uniform(g, n, *scale)
    log_r = _uniform(g, n, math.log(ratio[0]), math.log(ratio[1]))
    w = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)
    h = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    cx = w / 2 + (1 - w) * torch.rand(n, generator=g)
    cy = h / 2 + (1 - h) * torch.rand(n, generator=g)
    return torch.stack([cx, cy, w, h], 1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each image to its box, mirror where ``flip``, and resample to ``size`` (bilinear)."""
    b = x.shape[0]
    cx, cy, w, h = boxes.to(x.device, x.dtype).unbind(1)
    sign = 1.0 - 2.0 * flip.to(x.device, x.dtype)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = w * sign, 2 * cx - 1
    theta[:, 1, 1], theta[:, 1, 2] = h, 2 * cy - 1
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return (x * torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.device, x.dtype).view(-1, 1, 1, 1)


def colour_jitter(
    x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor, hue: torch.Tensor
) -> torch.Tensor:
    """Per-sample jitter of images in [0, 1]; factors of 1 (and hue 0) leave an image unchanged.
    Each blend ``a + (x - a) * f`` is computed in place as ``x * f + a * (1 - f)`` (one pass fewer)."""
    x = (x * _per_sample(brightness, x)).clamp_(0, 1)
    c = _per_sample(contrast, x)
    mean = _grey(x).mean((1, 2, 3), keepdim=True)
    x.mul_(c).add_(mean * (1 - c)).clamp_(0, 1)
    if x.shape[1] == 3:
        s = _per_sample(saturation, x)
        grey = _grey(x).mul_(1 - s)
        x.mul_(s).add_(grey).clamp_(0, 1)
        angle = 2 * math.pi * hue
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot = torch.zeros(len(hue), 3, 3)
        rot[:, 0, 0], rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = 1, cos, -sin, sin, cos
        m = (_YIQ2RGB @ rot @ _RGB2YIQ).to(x.device, x.dtype)  # [B, 3, 3]
        x = torch.bmm(m, x.flatten(2)).view_as(x).clamp_(0, 1)
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample separable Gaussian blur; ``sigma`` in pixels, 0 means no blur."""
    b, c, h, w = x.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).to(x.device, x.dtype)
    k = k.repeat_interleave(c, 0)  # one kernel per (sample, channel)
    y = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, -1, 1), groups=b * c)
    return y.view(b, c, h, w)


class Views:
    """Callable that makes one random view of every image in a batch."""

    def __init__(self, cfg: ViewConfig):
        self.cfg = cfg

    def __call__(
        self, images: torch.Tensor, g: torch.Generator, cropped: bool = False, at: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Views of ``images``; ``cropped``: they are this view's crops already (made from the whole
        image where it was decoded, :mod:`freelabel.data.crops`), so only the mirror is left to do.
        ``at=(first, total)``: ``images`` are samples ``first, first + 1, ...`` of a global batch of
        ``total`` split over processes; the random numbers are drawn for the whole global batch and this
        part's taken, so each sample gets the same view however the batch is split."""
        if images.ndim != 4 or not images.shape[0] or not images.shape[1]:
            raise ValueError(
                f"views are made from a batch of images [B, C, H, W] with B >= 1, got {tuple(images.shape)}"
            )
        c, n = self.cfg, images.shape[0]
        first, total = at or (0, n)
        # Every random number is drawn whether or not it is used, so the stream never depends on data.
        drawn = {
            "boxes": crop_boxes(g, total, c.scale, c.ratio),
            "flip": _coin(g, total, c.hflip),
            "on": _coin(g, total, c.jitter),
            "factors": torch.stack(
                [_uniform(g, total, 1 - s, 1 + s) for s in (c.brightness, c.contrast, c.saturation)]
            ).T,
            "hue": _uniform(g, total, -c.hue, c.hue),
            "grey": _coin(g, total, c.grayscale),
            "blur_on": _coin(g, total, c.blur),
            "sigma": _uniform(g, total, *c.blur_sigma) * (c.size / 224),
            "sol": _coin(g, total, c.solarize),
        }
        p = {k: v[first : first + n] for k, v in drawn.items()}
        x = images.float().div_(255) if images.dtype == torch.uint8 else images.to(torch.float32, copy=True)
        if cropped:
            _where(x, p["flip"], lambda y: y.flip(-1))
        else:
            x = resized_crop(x, p["boxes"], p["flip"], c.size)
        # Each augmentation runs, in place, on the samples that drew it.
        on = p["on"]
        if c.jitter > 0:
            _where(x, on, lambda y: colour_jitter(y, *p["factors"][on].T, p["hue"][on]))
        if c.grayscale > 0 and x.shape[1] == 3:
            _where(x, p["grey"], lambda y: _grey(y).expand_as(y))
        if c.blur > 0:
            _where(x, p["blur_on"], lambda y: gaussian_blur(y, p["sigma"][p["blur_on"]]))
        if c.solarize > 0:
            _where(x, p["sol"], lambda y: torch.where(y >= 0.5, 1 - y, y))
        mean = torch.tensor(c.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(c.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)


def _where(x: torch.Tensor, chosen: torch.Tensor, fn) -> None:
    """``x[chosen] = fn(x[chosen])`` in place, for a per-sample boolean ``chosen`` drawn on the CPU."""
    if bool(chosen.any()):
        idx = chosen.nonzero().squeeze(1).to(x.device)
        x.index_copy_(0, idx, fn(x.index_select(0, idx)))


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images as floats in [0, 1], resized (antialiased) to ``size`` if they are not that size."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


def normalise(images: torch.Tensor, cfg: ViewConfig) -> torch.Tensor:
    """The evaluation view: :func:`resize` to ``cfg.size``, then normalise (no randomness)."""
    x = resize(images, cfg.size)
    mean = torch.tensor(cfg.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std
