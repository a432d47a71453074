"""Heads put on top of a backbone's pooled features."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm


def mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    layers: int = 2,
    last_bn: bool = False,
    norm: bool = True,
    act: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
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

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        layers: int = 3,
        norm_last_layer: bool = True,
    ):
        super().__init__()
        self.mlp = mlp(in_dim, hidden_dim, bottleneck_dim, layers, norm=False, act=nn.GELU)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)
        self.last_layer.parametrizations.weight.original0.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class MaskedTokenDecoder(nn.Module):
    """A narrow ViT that predicts the tokens at hidden places of a patch grid from the visible ones: MAE's
    decoder and I-JEPA's predictor. Visible tokens (embedded to ``dim``) and a learned mask token at every
    asked place, each plus its fixed 2-D sin-cos position, go through ``depth`` transformer blocks; the
    outputs at the asked places are projected to ``out_dim``. Attention ignores order, so the visible and
    asked tokens need not be interleaved back into grid order."""

    def __init__(
        self,
        in_dim: int,
        grid: tuple[int, int],
        dim: int = 512,
        depth: int = 8,
        heads: int = 16,
        out_dim: int | None = None,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        from timm.layers import build_sincos2d_pos_embed
        from timm.models.vision_transformer import Block

        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos", build_sincos2d_pos_embed(list(grid), dim), persistent=False)  # [N, dim]
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj = nn.Linear(dim, out_dim or in_dim)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, visible: torch.Tensor, visible_at: torch.Tensor, asked_at: torch.Tensor) -> torch.Tensor:
        """``visible [B, K, in_dim]`` tokens at grid places ``visible_at [B, K]`` -> predictions ``[B, Q, out_dim]``
        at places ``asked_at [B, Q]``."""
        x = self.embed(visible) + self.pos[visible_at]
        q = self.mask_token + self.pos[asked_at]
        x = self.blocks(torch.cat([x, q.to(x.dtype)], 1))
        return self.proj(self.norm(x[:, visible.shape[1] :]))
