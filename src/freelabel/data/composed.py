"""Scenes with exact masks: real Fashion-MNIST garments composed onto larger canvases.

Each canvas gets a random background (uniform noise, noisy stripes, or smooth blotches), then a few
garments of one Fashion-MNIST split pasted at random places, later ones over earlier ones. A garment
covers the pixels where it is brighter than :data:`THRESHOLD`; those pixels take its values and its
class in the mask, so the mask is exact by construction: 0 is background, ``1 + c`` garment class
``c``. The same seed gives the same scenes. Train scenes use training garments, test scenes test
garments. :func:`mask_folder` reads any folder of images with PNG label masks into the same form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from .sources import FASHION_MNIST_CLASSES, fashion_mnist, load_image

THRESHOLD = 10  # a garment covers its pixels brighter than this
IGNORE = 255  # mask value of pixels that count for no class


@dataclass
class MaskedImages:
    """Images ``uint8 [N, C, S, S]`` with masks ``int64 [N, S, S]`` of class ids (``IGNORE``: unlabelled)."""

    images: torch.Tensor
    masks: torch.Tensor
    classes: list[str]
    objects: list[list[dict]] = field(default_factory=list)  # composed scenes: what was pasted where, in order

    def __len__(self) -> int:
        return len(self.images)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random textured or noisy ``float`` background in [0, 255]."""
    kind = rng.integers(3)
    if kind == 0:
        return rng.uniform(0, rng.uniform(30, 90), (size, size))
    if kind == 1:
        y, x = np.mgrid[:size, :size]
        angle, period = rng.uniform(0, math.pi), rng.uniform(4, 12)
        stripes = np.sin(2 * math.pi * (x * math.cos(angle) + y * math.sin(angle)) / period)
        return rng.uniform(20, 60) + rng.uniform(10, 30) * stripes + rng.normal(0, 8, (size, size))
    coarse = torch.from_numpy(rng.uniform(0, 90, (1, 1, 4, 4)))
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0, 0].numpy()


def compose(
    split: str = "train", n: int = 1000, size: int = 56, objects: tuple[int, int] = (2, 4), seed: int = 0
) -> MaskedImages:
    """``n`` canvases of ``size`` pixels with ``objects[0]`` to ``objects[1]`` garments of the Fashion-MNIST
    ``split`` each."""
    garments = fashion_mnist(split)
    rng = np.random.default_rng(seed)
    side = garments.images.shape[-1]
    if size < side:
        raise DataError(f"composed canvases must be at least {side} pixels, the garments' size; got {size}")
    images = np.empty((n, 1, size, size), np.uint8)
    masks = np.zeros((n, size, size), np.int64)
    placed = []
    for i in range(n):
        canvas = np.clip(background(rng, size), 0, 255).round().astype(np.uint8)
        scene = []
        for _ in range(rng.integers(objects[0], objects[1] + 1)):
            g = int(rng.integers(len(garments)))
            top, left = (int(v) for v in rng.integers(0, size - side + 1, 2))
            garment = garments.images[g, 0].numpy()
            cover = garment > THRESHOLD
            window = (slice(top, top + side), slice(left, left + side))
            canvas[window][cover] = garment[cover]
            masks[i][window][cover] = 1 + int(garments.labels[g])
            scene.append({"garment": g, "class": int(garments.labels[g]), "top": top, "left": left})
        images[i, 0], placed = canvas, placed + [scene]
    return MaskedImages(
        torch.from_numpy(images), torch.from_numpy(masks), ["background", *FASHION_MNIST_CLASSES], placed
    )


def mask_folder(root: str | Path, split: str, size: int, channels: int = 3) -> MaskedImages:
    """A folder of images with label masks: ``root/{train,test}/images/NAME.*`` beside
    ``root/{train,test}/masks/NAME.png`` (or ``root/images`` + ``root/masks`` for both splits), mask
    values being class ids and 255 unlabelled. Images are resized to ``size`` (masks nearest)."""
    root = Path(root).expanduser()
    base = root / split if (root / split / "images").is_dir() else root
    if not (base / "images").is_dir() or not (base / "masks").is_dir():
        raise DataError(
            f"{root} needs images/ and masks/ folders (or train/ and test/ with both); masks are PNGs of "
            "class ids with the images' names"
        )
    pairs = [(p, base / "masks" / f"{p.stem}.png") for p in sorted((base / "images").iterdir()) if p.is_file()]
    missing = [p.name for p, m in pairs if not m.is_file()]
    if missing or not pairs:
        raise DataError(
            f"{base / 'masks'} lacks the masks of {len(missing)} images (first: {missing[0]})"
            if missing
            else f"no images in {base / 'images'}"
        )
    images = torch.stack([load_image(p, size, channels) for p, _ in pairs])
    masks = torch.stack([read_mask(m, size) for _, m in pairs])
    n_classes = int(masks[masks != IGNORE].max()) + 1
    return MaskedImages(images, masks, [f"class {c}" for c in range(n_classes)])


def read_mask(path: Path, size: int) -> torch.Tensor:
    """A PNG of class ids as ``int64 [size, size]``, resized nearest."""
    from PIL import Image

    with Image.open(path) as mask:
        return torch.from_numpy(np.asarray(mask.convert("L").resize((size, size), Image.NEAREST)).astype(np.int64))


def open_masked(
    spec: str, split: str, size: int = 56, channels: int = 1, n: int | None = None, seed: int = 0
) -> MaskedImages:
    """``composed`` (``n`` scenes, default 1000 train / 500 test, of ``size`` pixels) or a mask folder."""
    if spec == "composed":
        count = n or (1000 if split == "train" else 500)
        return compose(split, count, size, seed=seed + (0 if split == "train" else 1))
    return mask_folder(spec, split, size, channels)
