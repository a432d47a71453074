"""Heads put on top of a backbone's pooled features."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm


def mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, last_bn: bool = False,
        norm: bool = True, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:  # fmt: skip
    """``layers`` linear layers with (BatchNorm +) activation between them: SimCLR's and MoCo v2's
    projection heads with ``layers=2`` (MoCo v2 without ``norm``), BYOL's, MoCo v3's, Barlow Twins'
    and VICReg's with 2 or 3 (and ``last_bn`` for MoCo v3), DINO's with GELU and no norm."""
    mods: list[nn.Module] = []
    dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == layers - 1
        mods.append(nn.Linear(a, b, bias=not (norm and not last) and not (last and last_bn)))
        if not last:
            mods += [nn.BatchNorm1d(b), act()] if norm else [act()]
        elif last_bn:
            mods.append(nn.BatchNorm1d(b, affine=False))
    return nn.Sequential(*mods)


class DINOHead(nn.Module):
    """DINO's head: an MLP to a bottleneck, L2-normalised, then a weight-normalised linear layer to
    ``out_dim`` prototypes whose norm is fixed to 1 (``norm_last_layer``)."""

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 layers: int = 3, norm_last_layer: bool = True):  # fmt: skip
        super().__init__()
        self.mlp = mlp(in_dim, hidden_dim, bottleneck_dim, layers, norm=False, act=nn.GELU)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)
        self.last_layer.parametrizations.weight.original0.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))
