"""Colour in CIE Lab, in torch: sRGB <-> Lab (D65 white), and the quantised ab plane that
colorization (Zhang, Isola & Efros, 2016) classifies into.

Images are ``float [B, 3, H, W]``: RGB in [0, 1]; Lab with L in [0, 100] and a, b roughly in
[-110, 110]. Every function works on any device and is differentiable where it makes sense.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

# sRGB (linear) -> CIE XYZ under D65, and the D65 reference white
_RGB2XYZ = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_XYZ2RGB = torch.linalg.inv(_RGB2XYZ)
_WHITE = _RGB2XYZ.sum(1)
_EPS = (6 / 29) ** 3  # where the Lab transfer function turns from a cube root to a line


def _mix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", m.to(x.device, x.dtype), x)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] ``[B, 3, H, W]`` -> CIE Lab ``[B, 3, H, W]``."""
    linear = torch.where(rgb > 0.04045, ((rgb.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = _mix(_RGB2XYZ, linear) / _WHITE.to(rgb.device, rgb.dtype).view(1, 3, 1, 1)
    f = torch.where(xyz > _EPS, xyz.clamp(min=_EPS) ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], 1)


def lab_to_rgb(lab: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """CIE Lab ``[B, 3, H, W]`` -> sRGB ``[B, 3, H, W]``, clipped to [0, 1] unless ``clip=False``
    (colours outside the sRGB gamut then fall outside [0, 1])."""
    L, a, b = lab.unbind(1)
    fy = (L + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], 1)
    xyz = torch.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29))
    linear = _mix(_XYZ2RGB, xyz * _WHITE.to(lab.device, lab.dtype).view(1, 3, 1, 1))
    if clip:
        linear = linear.clamp(0, 1)
    rgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp(min=0.0031308) ** (1 / 2.4) - 0.055, 12.92 * linear)
    return rgb.clamp(0, 1) if clip else rgb


@functools.cache
def ab_bins(spacing: float = 10.0) -> torch.Tensor:
    """Centres ``[Q, 2]`` of the cells of a square grid on the ab plane that some sRGB colour falls
    in: Zhang et al.'s in-gamut bins (Q = 313 at their spacing of 10, centred on multiples of 10)."""
    levels = torch.linspace(0, 1, 64)
    rgb = torch.stack(torch.meshgrid(levels, levels, levels, indexing="ij")).reshape(1, 3, -1, 1)
    ab = rgb_to_lab(rgb.double())[0, 1:, :, 0].T.float()
    return torch.unique(torch.round(ab / spacing), dim=0) * spacing


def soft_encode(ab: torch.Tensor, bins: torch.Tensor, neighbours: int = 5, sigma: float = 5.0) -> torch.Tensor:
    """Zhang et al.'s soft target: each pixel's ab ``[B, 2, H, W]`` spread over its ``neighbours``
    nearest bins with Gaussian weights (``sigma`` in ab units) -> distributions ``[B, Q, H, W]``."""
    b, _, h, w = ab.shape
    d2 = torch.cdist(ab.permute(0, 2, 3, 1).reshape(-1, 2).float(), bins.to(ab.device).float()) ** 2
    near, idx = d2.topk(neighbours, dim=1, largest=False)
    weights = F.softmax(-near / (2 * sigma**2), dim=1)  # Gaussian, normalised over the neighbours
    target = torch.zeros_like(d2).scatter_(1, idx, weights)
    return target.view(b, h, w, -1).permute(0, 3, 1, 2)


def annealed_mean(logits: torch.Tensor, bins: torch.Tensor, temperature: float = 0.38) -> torch.Tensor:
    """Zhang et al.'s point estimate from bin scores ``[B, Q, H, W]``: the mean of the distribution
    sharpened by ``temperature`` (1: the mean, towards 0: the mode) -> ab ``[B, 2, H, W]``."""
    p = F.softmax(logits.float() / temperature, dim=1)
    return torch.einsum("bqhw,qc->bchw", p, bins.to(logits.device).float())
