"""Patch masks for the masked methods, one module they share.

Masks are over a ViT's patch grid, row-major; ``True`` means *hidden*, as
:meth:`freelabel.backbones.Backbone.forward_visible` and ``forward_masked`` take it. Randomness comes from a
``torch.Generator``, so a seed fixes every mask.

- :class:`RandomMasks` (MAE): each sample hides its own random ``ratio`` of the patches.
- :class:`MultiBlockMasks` (I-JEPA): a few rectangular target blocks and one large context block
  with the targets cut out of it, as facebookresearch/ijepa's ``src/masks/multiblock.py`` makes them.
- :func:`block_masks` (iBOT, DINOv2): BEiT-style blocks on a share of the images; :class:`BlockMasks`.

A method that needs masks made on the data-loading side sets ``masks`` to a maker (the classes);
the loader calls it once per batch with the batch size and a seeded generator (so a resumed run draws
the same masks), and the tensors it returns reach the method as ``batch.masks``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch


def keep_first(mask: torch.Tensor, count: int) -> torch.Tensor:
    """``mask`` (True = chosen) with only the first ``count`` chosen places of each row left chosen."""
    return mask & (mask.cumsum(-1) <= count)


@dataclass
class RandomMasks:
    """MAE's masks: every sample keeps ``int(N * (1 - ratio))`` of its N patches, chosen uniformly at
    random, and hides the rest; every row of the mask has the same count."""

    grid: tuple[int, int]
    ratio: float = 0.75

    def __post_init__(self):
        if not 0 < self.ratio < 1:
            raise ValueError(f"mask ratio must be between 0 and 1, got {self.ratio}")

    @property
    def num_keep(self) -> int:
        return max(1, int(math.prod(self.grid) * (1 - self.ratio)))

    def __call__(self, batch: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        """``{"mask": bool [B, N]}``, True where the patch is hidden."""
        n = math.prod(self.grid)
        order = torch.rand(batch, n, generator=g).argsort(1)  # a random permutation per sample
        mask = torch.ones(batch, n, dtype=torch.bool)
        mask.scatter_(1, order[:, : self.num_keep], False)
        return {"mask": mask}


@dataclass
class MultiBlockMasks:
    """I-JEPA's masks: ``targets`` blocks of one size per batch (area a ``target_scale`` fraction of the grid,
    height/width a ``target_aspect``), placed per sample; one context block (``context_scale``, square) per
    sample with every target cut out. Every target has the batch's block size, so the same count; contexts
    are cut to the smallest count in the batch by keeping their first patches, as the paper's collator does."""

    grid: tuple[int, int]
    targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    context_aspect: tuple[float, float] = (1.0, 1.0)
    min_keep: int = 4
    tries: int = 20

    def block_size(self, g: torch.Generator, scale: tuple[float, ...], aspect: tuple[float, ...]) -> tuple[int, int]:
        """``(h, w)`` of a block of random area (a fraction in ``scale``) and ratio ``h / w`` (in ``aspect``)."""
        rows, cols = self.grid
        s, a = (lo + (hi - lo) * torch.rand(1, generator=g).item() for lo, hi in (scale, aspect))
        area = s * rows * cols
        h, w = round(math.sqrt(area * a)), round(math.sqrt(area / a))
        return min(max(h, 1), max(rows - 1, 1)), min(max(w, 1), max(cols - 1, 1))  # smaller than the grid, as ijepa

    def place(self, g: torch.Generator, shape: tuple[int, ...], h: int, w: int) -> torch.Tensor:
        """Blocks of ``h x w`` at random places: bool ``[*shape, N]``, True inside the block."""
        rows, cols = self.grid
        top = torch.randint(0, rows - h + 1, (*shape, 1), generator=g)
        left = torch.randint(0, cols - w + 1, (*shape, 1), generator=g)
        r, c = torch.arange(rows).repeat_interleave(cols), torch.arange(cols).repeat(rows)
        return (r >= top) & (r < top + h) & (c >= left) & (c < left + w)

    def __call__(self, batch: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        """``{"context": bool [B, N]`` True where hidden from the context encoder,
        ``"targets": long [B, M, K]`` the patch indices of each sample's M target blocks}``."""
        th, tw = self.block_size(g, self.target_scale, self.target_aspect)
        ch, cw = self.block_size(g, self.context_scale, self.context_aspect)
        targets = self.place(g, (batch, self.targets), th, tw)
        context = self.place(g, (batch,), ch, cw) & ~targets.any(1)
        for _ in range(self.tries):  # a context too small: place its block again
            small = context.sum(1) < self.min_keep
            if not small.any():
                break
            context[small] = self.place(g, (int(small.sum()),), ch, cw) & ~targets[small].any(1)
        count = int(context.sum(1).min())
        if count == 0:
            raise ValueError(f"the targets cover the context on a {self.grid} grid; use smaller target blocks")
        context = keep_first(context, count)
        indices = targets.nonzero()[:, 2].view(batch, self.targets, th * tw)
        return {"context": ~context, "targets": indices}


def places(mask: torch.Tensor) -> torch.Tensor:
    """The grid places where ``mask [B, N]`` is True, ``long [B, K]`` in grid order (every row must have K)."""
    return mask.nonzero()[:, 1].view(mask.shape[0], -1)


@dataclass
class BlockMasks:
    """iBOT's and DINOv2's masks as a mask maker: :func:`block_masks` over the ``views`` global views of
    every image, stacked view by view like the views are (``{"mask": bool [views * B, N]}``)."""

    grid: tuple[int, int]
    ratio: tuple[float, float] = (0.1, 0.5)
    probability: float = 0.5
    views: int = 2

    def __call__(self, batch: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        return {"mask": block_masks(self.views * batch, self.grid, self.ratio, self.probability, generator=g)}


def block_masks(
    batch: int,
    grid: tuple[int, int],
    ratio: tuple[float, float] = (0.1, 0.5),
    probability: float = 0.5,
    min_block: int = 4,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """iBOT's and DINOv2's block-wise masks (after BEiT): ``round(batch * probability)`` images (at
    least one while ``probability > 0``) are masked, the rest are not; the masked ones get ratios
    spread evenly over ``ratio`` (image ``i`` of ``n`` draws from the ``i``-th of ``n`` equal slices
    of the range), each a union of rectangles of at least ``min_block`` patches (never more than half
    the grid at once) with a log-uniform aspect in ``aspect``. Every masked image hides exactly
    ``round(ratio * N)`` patches (kept within the range); the order of images is shuffled.
    Returns bool ``[batch, H * W]``."""
    h, w = grid
    n = h * w
    rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
    masked = min(batch, max(1, round(batch * probability))) if probability > 0 else 0
    lo, hi = math.ceil(ratio[0] * n), math.floor(ratio[1] * n)
    masks = np.zeros((batch, h, w), dtype=bool)
    for i in range(masked):
        r = ratio[0] + (ratio[1] - ratio[0]) * (i + rng.random()) / masked
        _fill_blocks(masks[i], min(max(round(r * n), lo), hi), min_block, aspect, rng)
    order = torch.randperm(batch, generator=generator)
    return torch.from_numpy(masks)[order].flatten(1)


def _fill_blocks(mask: np.ndarray, count: int, min_block: int, aspect: tuple[float, float], rng: random.Random) -> None:
    """Hide ``count`` patches of ``mask [H, W]`` with rectangles; a rectangle that would hide more than
    is left hides only its first new patches in raster order."""
    h, w = mask.shape
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    left, misses = count, 0
    while left > 0 and misses < 100:  # 100 rectangles in a row on hidden patches only: give up
        area = rng.uniform(min_block, max(min_block, min(left, h * w // 2)))
        a = math.exp(rng.uniform(*log_aspect))
        bh, bw = min(h, max(1, round(math.sqrt(area * a)))), min(w, max(1, round(math.sqrt(area / a))))
        top, lft = rng.randint(0, h - bh), rng.randint(0, w - bw)
        block = mask[top : top + bh, lft : lft + bw]
        rows, cols = np.nonzero(~block)
        new = len(rows[:left])
        block[rows[:left], cols[:left]] = True
        left -= new
        misses = 0 if new else misses + 1
