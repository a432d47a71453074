"""Which patch tokens a method hides: one module that the masked methods share.

Masks are boolean ``[B, N]`` over a ``grid`` of ``H x W = N`` patches in raster order (True = hidden),
the layout ``forward_tokens(x, mask)`` of the ViT backbones takes. Randomness comes from a
``torch.Generator``, so a seed fixes every mask.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch


def block_masks(batch: int, grid: tuple[int, int], ratio: tuple[float, float] = (0.1, 0.5), probability: float = 0.5,
                min_block: int = 4, aspect: tuple[float, float] = (0.3, 1 / 0.3),
                generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
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
