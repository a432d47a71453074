"""The method registry: one line per method file, and the two functions that build a method or a
run's backbone from a config.

Adding a method is a file in this folder and a line in :data:`REGISTRY` (``name: ("module:Class",
description)``; a dotted ``package.module`` is imported as it is, so a method can also live outside
freelabel). The classes are imported when first asked for, so listing the methods (``freelabel
methods``) imports no method file and no torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, RunError

if TYPE_CHECKING:
    import torch.nn as nn

    from ..config import RunConfig
    from .base import Method

REGISTRY: dict[str, tuple[str, str]] = {
    "simclr": (
        "simclr:SimCLR",
        "contrastive: two views of an image find each other among the batch (NT-Xent) [Chen et al. 2020]",
    ),
    "mocov2": ("moco:MoCoV2", "contrastive: query vs momentum key, negatives from a queue [Chen et al. 2020]"),
    "mocov3": (
        "moco:MoCoV3",
        "contrastive: momentum encoder, predictor, in-batch negatives, for ViTs [Chen, Xie & He 2021]",
    ),
    "byol": ("byol:BYOL", "self-distillation: predict an EMA target's embedding of the other view [Grill et al. 2020]"),
    "dino": ("dino:DINO", "self-distillation: multi-crop student matches a centred EMA teacher [Caron et al. 2021]"),
    "dinov2": (
        "dinov2:DINOv2",
        "DINO + iBOT masked patches + KoLeo, Sinkhorn option; Gram anchoring (DINOv3) [Oquab et al. 2023]",
    ),
    "barlowtwins": (
        "barlow_twins:BarlowTwins",
        "redundancy reduction: cross-correlation of two views -> identity [Zbontar et al. 2021]",
    ),
    "vicreg": ("vicreg:VICReg", "variance-invariance-covariance regularisation [Bardes, Ponce & LeCun 2022]"),
    "rotation": (
        "rotation:Rotation",
        "pretext: which of 4 rotations was applied (RotNet) [Gidaris, Singh & Komodakis 2018]",
    ),
    "jigsaw": (
        "jigsaw:Jigsaw",
        "pretext: which permutation shuffled 3x3 tiles (max-Hamming set) [Noroozi & Favaro 2016]",
    ),
    "colorization": (
        "colorization:Colorization",
        "pretext: colour (ab bins, rebalanced) from lightness; colour data [Zhang, Isola & Efros 2016]",
    ),
    "clip": (
        "clip:CLIP",
        "language-image: match images to their captions, symmetric InfoNCE [Radford et al. 2021]; LiT: a locked tower",
    ),
    "siglip": ("clip:SigLIP", "language-image: a sigmoid per image-caption pair, learnable bias [Zhai et al. 2023]"),
    "mae": ("mae:MAE", "masked image modelling: pixels of 75% hidden patches from the rest (ViT) [He et al. 2022]"),
    "ijepa": (
        "ijepa:IJEPA",
        "joint embedding: predict an EMA target's features of hidden blocks from a context block [Assran 2023]",
    ),
}


def known_method(name: str) -> str:
    """``name`` when it is registered; a :class:`ConfigError` listing the valid names otherwise (no import)."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}; valid: {', '.join(REGISTRY)}")
    return name


def method_class(name: str) -> type[Method]:
    """The class registered as ``name``, imported now; a :class:`ConfigError` for unknown names."""
    module, cls = REGISTRY[known_method(name)][0].split(":")
    return getattr(importlib.import_module(module if "." in module else f"{__name__}.{module}"), cls)


class _Methods(Mapping):
    """``METHODS[name]`` is the method class, imported on first use; iterating gives the names."""

    def __getitem__(self, name: str) -> type[Method]:
        if name not in REGISTRY:
            raise KeyError(name)
        return method_class(name)

    def __iter__(self) -> Iterator[str]:
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)


METHODS: Mapping[str, type[Method]] = _Methods()


def build_method(cfg: RunConfig, in_chans: int) -> Method:
    """The method of ``cfg`` with a fresh backbone, its ``method_args`` checked against its signature."""
    import inspect

    cls = method_class(cfg.method)
    accepted = set(inspect.signature(cls).parameters) - {"backbone", "views"}
    bad = set(cfg.method_args) - accepted
    if bad:
        raise ConfigError(f"{cfg.method} has no option {sorted(bad)[0]!r}; valid: {', '.join(sorted(accepted))}")
    backbone = cls.make_backbone(cfg.backbone.name, in_chans, cfg.views, **cfg.backbone.args)
    return cls(backbone, views=cfg.views, **cfg.method_args)


def load_backbone(run: str | Path, trained: bool = True) -> tuple[nn.Module, RunConfig]:
    """A run's backbone with its trained weights (``trained=False``: the same architecture with the
    run's seeded random initialisation), in eval mode, and the run's config."""
    import torch

    from ..run import load_backbone_state, load_config

    cfg = load_config(run)
    torch.manual_seed(cfg.seed)
    cls = method_class(cfg.method)
    backbone = cls.make_backbone(cfg.backbone.name, cfg.data.channels or 3, cfg.views, **cfg.backbone.args)
    if trained:
        backbone.load_state_dict(load_backbone_state(run))
    return backbone.eval(), cfg


def load_method(run: str | Path) -> Method:
    """A run's whole method (backbone, heads, text tower) with the weights of its newest checkpoint, in eval mode."""
    import torch

    from ..run import load_config, load_latest_checkpoint

    cfg = load_config(run)
    found = load_latest_checkpoint(run)  # the newest that loads
    if found is None:
        raise RunError(f"{run} has no checkpoint yet; train it first")
    torch.manual_seed(cfg.seed)
    method = build_method(cfg, cfg.data.channels or 3)
    method.load_state_dict(found[1])
    return method.eval()


def __getattr__(name: str):
    if name == "Method":  # the base class, imported (with torch) only when asked for
        from .base import Method

        return Method
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "METHODS",
    "REGISTRY",
    "Method",
    "build_method",
    "known_method",
    "load_backbone",
    "load_method",
    "method_class",
]
