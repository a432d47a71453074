"""Random-resized crops from the whole image, made where the image is decoded.

Files of any size and aspect ratio are decoded no larger than the recipe's views need (JPEG's
draft mode: libjpeg scales by 1/2, 1/4 or 1/8 while decoding), and each view's box is drawn over the
whole decoded image, in its own pixels: its area a ``scale`` fraction of the image's, its aspect
ratio within ``ratio`` (torchvision's RandomResizedCrop, with its ten tries and its centre fallback).
The box is resized to the view size once, by Pillow's convolution resampling, which is antialiased
when it shrinks. Only the geometry happens here, per image; the mirror, colour, blur and the rest
stay batched on the model's device (:class:`freelabel.data.views.Views`).

The boxes come from a generator seeded by where the sample is in the run (:func:`crop_generator`),
so a resumed run crops exactly as the uninterrupted one would have.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .images import open_image as decode
from .views import ViewConfig

TRIES = 10  # boxes drawn per view before falling back to the centre box (as torchvision)
MAX_DECODE = 4  # never decode a short side more than this many times the largest view


def decode_side(views: Sequence[ViewConfig]) -> int:
    """The short side to decode images at: the smallest crop of every view keeps the view's pixels,
    up to ``MAX_DECODE`` times the largest view."""
    need = max(math.ceil(v.size / math.sqrt(v.scale[0])) for v in views)
    return min(need, MAX_DECODE * max(v.size for v in views))


def crop_generator(seed: int, epoch: int, sample: int | str) -> torch.Generator:
    """The crops' random stream of one sample in one epoch (``sample``: its index, or its key in shards)."""
    if isinstance(sample, str):
        sample = zlib.crc32(sample.encode())
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 4_294_967_311 + sample)


def crop_box(
    g: torch.Generator, width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[float, float, float, float]:
    """A random box ``(left, top, width, height)`` in pixels of a ``width`` x ``height`` image: area a
    ``scale`` fraction of the image, aspect ratio (w/h) log-uniform in ``ratio``. Always draws the same
    count of random numbers, so the stream does not depend on the image."""
    u = torch.rand(TRIES, 4, generator=g, dtype=torch.float64).tolist()
    area = width * height
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for a, r, x, y in u:
        aspect = math.exp(lo + (hi - lo) * r)
        target = area * (scale[0] + (scale[1] - scale[0]) * a)
        w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if w <= width and h <= height:
            return x * (width - w), y * (height - h), w, h
    aspect = min(max(width / height, ratio[0]), ratio[1])  # the largest centred box of an allowed aspect
    w, h = (width, min(height, width / aspect)) if width / height <= aspect else (min(width, height * aspect), height)
    return (width - w) / 2, (height - h) / 2, w, h  # min(): width / (width / height) can round above height


def resized_crop(img: Image.Image, box: tuple[float, float, float, float], size: int) -> torch.Tensor:
    """The ``box`` of ``img`` resampled to ``uint8 [C, size, size]`` (bilinear, antialiased when shrinking)."""
    left, top, w, h = box
    edges = (max(0.0, left), max(0.0, top), min(img.width, left + w), min(img.height, top + h))  # float rounding
    out = img.resize((size, size), Image.BILINEAR, box=edges, reducing_gap=3.0)
    arr = np.asarray(out, dtype=np.uint8)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


@dataclass
class RandomCrops:
    """One random crop per view from the whole image: ``crops(img, g) -> [uint8 [C, S_v, S_v], ...]``."""

    views: Sequence[ViewConfig]
    channels: int = 3

    @property
    def decode_side(self) -> int:
        return decode_side(self.views)

    def __call__(self, img: Image.Image, g: torch.Generator) -> list[torch.Tensor]:
        return [resized_crop(img, crop_box(g, *img.size, v.scale, v.ratio), v.size) for v in self.views]

    def read(self, src, g: torch.Generator) -> list[torch.Tensor]:
        """Decode ``src`` (a path or a binary file) at :attr:`decode_side` and crop it."""
        return self(decode(src, self.channels, self.decode_side), g)
