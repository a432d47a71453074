"""Jigsaw puzzles (Noroozi & Favaro, 2016): cut an image into a 3x3 grid of tiles (or 4x4), shuffle
them by one of a fixed set of permutations, and predict which permutation it was.

    P = maximal_hamming_permutations(100)            # chosen once, stored with the run
    tiles = puzzle_tiles(aug(x))                     # 9 tiles; random gaps, jittered colour channels
    i ~ U{0..|P|-1};  shuffled = tiles[P[i]]         # the tile at place k is tiles[P[i][k]]
    loss = cross_entropy(c(concat_k h(f(shuffled_k))), i)   # shared tile encoder f, h; classifier c

Shortcuts are blocked as in the paper: the gaps between tiles hide edge continuity, each tile is
normalised on its own (no matching of brightness), and each colour channel of a tile is shifted by
up to ``channel_jitter`` pixels against chromatic aberration; grey images come from the view's
``grayscale`` probability.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backbones import InputTransform, build_backbone
from ..config import ConfigError
from ..data.loader import Batch
from ..data.views import ViewConfig
from ..heads import mlp
from .base import Method

CANDIDATES = 100_000  # random permutations to choose from when there are too many to list


def hamming(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise Hamming distances ``[len(a), len(b)]``: places where two permutations differ."""
    return (a[:, None] != b[None]).sum(-1)


def maximal_hamming_permutations(
    n: int, tiles: int = 9, min_distance: int = 1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Noroozi & Favaro's permutation set, chosen greedily: start from a random permutation, then
    add the one farthest from those chosen so far (largest Hamming distance to the nearest; ties
    by the largest total distance, then at random). Up to 9 tiles the candidates are every
    permutation; beyond (16 tiles: 2e13 of them) ``CANDIDATES`` drawn at random. Returns
    ``[n, tiles]``; raises ``ConfigError`` when ``n`` permutations cannot all be ``min_distance``
    apart this way."""
    if math.factorial(tiles) <= math.factorial(9):
        every = torch.from_numpy(np.array(list(itertools.permutations(range(tiles))), dtype=np.int8))
        every = every[torch.randperm(len(every), generator=generator)]  # random start and tie-breaking
    else:
        every = torch.rand(CANDIDATES, tiles, generator=generator).argsort(1).to(torch.int8)
    if not 1 <= n <= len(every):
        raise ConfigError(f"a jigsaw of {tiles} tiles has between 1 and {len(every)} permutations, not {n}")
    nearest = torch.full((len(every),), tiles + 1, dtype=torch.int32)
    total = torch.zeros(len(every), dtype=torch.int32)
    chosen = [0]
    for _ in range(n - 1):
        d = hamming(every, every[chosen[-1:]])[:, 0].to(torch.int32)
        nearest, total = torch.minimum(nearest, d), total + d
        pick = int((nearest * (tiles * n + 1) + total).argmax())
        if nearest[pick] < min_distance:
            raise ConfigError(
                f"only {len(chosen)} permutations of {tiles} tiles were found at Hamming distance "
                f">= {min_distance} from each other, not {n}; ask for fewer or a smaller distance"
            )
        chosen.append(pick)
    return every[chosen].long()


def standardise(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``x`` shifted and scaled to mean 0, std 1 over ``dims``."""
    return (x - x.mean(dims, keepdim=True)) / (x.std(dims, keepdim=True) + 1e-5)


class Standardised(InputTransform):
    """A backbone that standardises each input on its own, as every jigsaw tile is in training, so that
    whole images in evaluation meet the statistics the network learned on."""

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return standardise(x, (1, 2, 3))


def puzzle_tiles(x: torch.Tensor, grid: int = 3, tile: float = 64 / 75, channel_jitter: int = 0) -> torch.Tensor:
    """Cut ``x [B, C, S, S]`` into ``grid x grid`` cells and take from each, at a random place, a tile
    of ``tile`` times the cell's side (random gaps); every channel of a tile moves by up to
    ``channel_jitter`` pixels of its own. Each tile is normalised to mean 0, std 1. Returns tiles
    ``[B, grid * grid, C, t, t]`` in row-major order of their cells."""
    b, c, s, _ = x.shape
    cell = s // grid
    t = max(1, round(cell * tile))
    dev = x.device
    corner = torch.arange(grid, device=dev) * cell
    corner = torch.stack(torch.meshgrid(corner, corner, indexing="ij"), -1).view(1, grid * grid, 1, 2)
    start = corner + torch.randint(0, cell - t + 1, (b, grid * grid, 1, 2), device=dev)
    start = start + torch.randint(-channel_jitter, channel_jitter + 1, (b, grid * grid, c, 2), device=dev)
    start = start.clamp(0, s - t)  # [B, T, C, 2]
    offsets = torch.arange(t, device=dev)
    rows = (start[..., 0, None] + offsets)[..., :, None]  # [B, T, C, t, 1]
    cols = (start[..., 1, None] + offsets)[..., None, :]  # [B, T, C, 1, t]
    images, channels = torch.arange(b, device=dev).view(b, 1, 1, 1, 1), torch.arange(c, device=dev).view(1, 1, c, 1, 1)
    return standardise(x[images, channels, rows, cols], (2, 3, 4))


class Jigsaw(Method):
    @classmethod
    def make_backbone(cls, name: str, in_chans: int, views: ViewConfig, **args) -> nn.Module:
        return Standardised(build_backbone(name, in_chans, views.size, **args))

    def __init__(
        self,
        backbone: nn.Module,
        views: ViewConfig,
        permutations: int = 100,
        min_distance: int = 1,
        grid: int = 3,
        tile: float = 64 / 75,
        channel_jitter: int = 2,
        tile_dim: int = 512,
        hidden_dim: int = 4096,
    ):
        super().__init__()
        self.backbone = backbone
        self.views = [views]
        self.grid, self.tile, self.channel_jitter = grid, tile, channel_jitter
        # Drawn from the global generator, which the engine seeds with the run's seed before building
        # the method: the same seed gives the same set, and the checkpoint keeps it.
        self.register_buffer("permutations", maximal_hamming_permutations(permutations, grid * grid, min_distance))
        self.tile_head = nn.Sequential(nn.Linear(backbone.embed_dim, tile_dim), nn.ReLU(inplace=True))  # fc6, shared
        self.classifier = mlp(grid * grid * tile_dim, hidden_dim, permutations, 2)  # fc7, fc8

    def training_step(self, batch: Batch) -> dict:
        tiles = puzzle_tiles(batch.views[0], self.grid, self.tile, self.channel_jitter)
        b = len(tiles)
        target = torch.randint(0, len(self.permutations), (b,), device=tiles.device)
        shuffled = tiles[torch.arange(b, device=tiles.device)[:, None], self.permutations[target]]
        features = self.tile_head(self.backbone(shuffled.flatten(0, 1))).view(b, -1)  # tiles of an image side by side
        logits = self.classifier(features)
        accuracy = (logits.argmax(1) == target).float().mean()
        return {"loss": F.cross_entropy(logits.float(), target), "accuracy": accuracy}

    def artefacts(self, batch: Batch) -> dict[str, bytes]:
        return {"permutations.json": json.dumps(self.permutations.tolist()).encode()}
