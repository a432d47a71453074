"""Backbones behind one interface, :class:`Backbone`.

Names:

- ``convnet``: a small, fast CNN (1.2M parameters) for CPU runs on small images;
- ``resnet18`` ... ``resnet152``: torchvision ResNets, with a 3x3 stride-1 stem and no max-pool
  when the image side is 64 or less (the CIFAR variant);
- ``vit_tiny`` / ``vit_small`` / ``vit_base`` / ``vit_large``: timm ViTs at any ``patch_size`` and
  ``image_size``;
- ``timm:NAME`` (or any other name timm knows): that timm model, headless.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import torch
import torch.nn as nn
import torchvision

from .catalog import NAMED, TORCHVISION_RESNETS, VITS
from .errors import BackboneError


@runtime_checkable
class Backbone(Protocol):
    """What every backbone offers: one entry point per use, in timm's manner (no mode flags).

    ``grid`` and ``patch_size`` are ``None`` for backbones without patches (CNNs); those refuse
    :meth:`forward_visible` and :meth:`forward_masked` with a :class:`BackboneError` that names the fix."""

    embed_dim: int  # D
    in_chans: int  # channels of the input it takes
    grid: tuple[int, int] | None  # the patch grid (rows, cols) at the training image size
    patch_size: int | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, D]``."""

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch (or spatial) tokens ``[B, N, D]``, no class or register tokens."""

    def forward_pooled_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pooled [B, D], tokens [B, N, D])`` of one pass."""

    def forward_visible(self, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Tokens of the visible patches only ``[B, N_visible, D]``, in grid order (MAE's, I-JEPA's
        encoders): ``hidden`` (bool ``[B, N]``, the same count in every row) patches are dropped after
        the position embedding, before the blocks."""

    def forward_masked(
        self, x: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pooled, tokens)`` with the ``mask`` (bool ``[B, N]``, any count per row) patches replaced by
        ``mask_token [D]`` before the position embedding (iBOT, DINOv2)."""


def _no_patches(net: nn.Module) -> BackboneError:
    return BackboneError(f"{type(net).__name__} has no patch tokens to hide; use a ViT backbone (vit_tiny, ...)")


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ConvBackbone(nn.Module):
    """A CNN whose ``features`` map gives the tokens (one per position) and, averaged, the embedding."""

    features: nn.Module
    embed_dim: int
    in_chans: int
    grid = patch_size = None

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean((2, 3))

    def forward_pooled_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.forward_tokens(x)
        return tokens.mean(1), tokens

    def forward_visible(self, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        raise _no_patches(self)

    def forward_masked(
        self, x: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise _no_patches(self)


class ConvNet(ConvBackbone):
    """A VGG-style CNN: a stride-2 stem, then stages that halve the resolution and double the width."""

    def __init__(self, in_chans: int = 3, widths: tuple[int, ...] = (64, 128, 256)):
        super().__init__()
        layers = [_conv_bn(in_chans, widths[0], 2), _conv_bn(widths[0], widths[0])]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [_conv_bn(cin, cout, 2), _conv_bn(cout, cout)]
        self.features = nn.Sequential(*layers)
        self.embed_dim, self.in_chans = widths[-1], in_chans


class ResNet(ConvBackbone):
    """A torchvision ResNet without its classifier."""

    def __init__(self, name: str, in_chans: int = 3, image_size: int = 224):
        super().__init__()
        net = getattr(torchvision.models, name)(weights=None)
        if image_size <= 64:  # CIFAR-style stem: keep the resolution of small images
            net.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        elif in_chans != 3:
            net.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        self.embed_dim, self.in_chans = net.fc.in_features, in_chans
        self.features = nn.Sequential(*list(net.children())[:-2])


@contextmanager
def _output_replaced(module: nn.Module, change: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Inside, ``module``'s output goes through ``change``: a way into a public ``forward_features``."""
    handle = module.register_forward_hook(lambda _module, _args, out: change(out))
    try:
        yield
    finally:
        handle.remove()


def vit_args(name: str, **overrides) -> dict:
    """timm ``VisionTransformer`` arguments of a named ViT (``vit_tiny`` ...): 16-pixel patches, any image size."""
    dim, depth, heads = VITS[name]
    return {
        "embed_dim": dim,
        "depth": depth,
        "num_heads": heads,
        "patch_size": 16,
        "dynamic_img_size": True,
    } | overrides


class TimmBackbone(nn.Module):
    """Any timm model, headless. A ViT's entry points run timm's public ``forward_features``; hiding
    patches changes the output of its ``patch_embed`` (mask token) or ``patch_drop`` (visible only)."""

    def __init__(self, name: str, in_chans: int = 3, image_size: int = 224, **kwargs):
        super().__init__()
        import timm

        if name in VITS:
            kwargs = vit_args(name, **kwargs)
            self.model = timm.models.vision_transformer.VisionTransformer(
                img_size=image_size, in_chans=in_chans, num_classes=0, **kwargs
            )
        else:
            extra = {"img_size": image_size} if "vit" in name or "deit" in name else {}
            self.model = timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=0, **extra, **kwargs)
        self.embed_dim, self.in_chans = self.model.num_features, in_chans
        vit = hasattr(self.model, "patch_embed") and hasattr(self.model, "blocks")
        embed = self.model.patch_embed if vit else None
        self.grid = tuple(embed.grid_size) if vit else None
        self.patch_size = embed.patch_size[0] if vit else None
        self.prefix = self.model.num_prefix_tokens if vit else 0  # class and register tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_features(x)
        if self.grid is None and feats.ndim == 4:  # a CNN's feature map
            return feats.flatten(2).transpose(1, 2)
        return feats[:, self.prefix :]

    def forward_pooled_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.grid is None:
            return self.forward(x), self.forward_tokens(x)
        feats = self.model.forward_features(x)
        return self.model.forward_head(feats, pre_logits=True), feats[:, self.prefix :]

    def forward_visible(self, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        if self.grid is None:
            raise _no_patches(self.model)

        def keep_visible(t: torch.Tensor) -> torch.Tensor:  # t: [B, prefix + N, D], positions added
            shape = [t.shape[0], t.shape[1] - self.prefix]
            if list(hidden.shape) != shape or bool((hidden.sum(1) != hidden[0].sum()).any()):
                raise BackboneError(
                    f"a token mask must be bool [B, N] = {shape} hiding the same number of patches "
                    f"in every row; got {list(hidden.shape)}"
                )
            keep = (~hidden).nonzero()[:, 1].view(t.shape[0], -1) + self.prefix
            index = torch.cat([torch.arange(self.prefix, device=t.device).expand(t.shape[0], -1), keep], 1)
            return t.gather(1, index.unsqueeze(-1).expand(-1, -1, t.shape[-1]))

        with _output_replaced(self.model.patch_drop, keep_visible):
            return self.model.forward_features(x)[:, self.prefix :]

    def forward_masked(
        self, x: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.grid is None:
            raise _no_patches(self.model)

        def put_token(t: torch.Tensor) -> torch.Tensor:  # t: [B, N, D] or [B, H, W, D], no positions yet
            return torch.where(mask.view(*t.shape[:-1], 1), mask_token.to(t.dtype), t)

        with _output_replaced(self.model.patch_embed, put_token):
            feats = self.model.forward_features(x)
        return self.model.forward_head(feats, pre_logits=True), feats[:, self.prefix :]


class InputTransform(nn.Module):
    """A backbone behind a fixed change of its input (colorization's lightness, jigsaw's per-image
    standardisation): every entry point changes ``x`` with :meth:`transform`, then calls the same entry
    point of ``net`` with every other argument as given."""

    def __init__(self, net: nn.Module, in_chans: int | None = None):
        super().__init__()
        self.net = net
        self.embed_dim, self.grid, self.patch_size = net.embed_dim, net.grid, net.patch_size
        self.in_chans = in_chans or net.in_chans

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.transform(x))

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_tokens(self.transform(x))

    def forward_pooled_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.forward_pooled_tokens(self.transform(x))

    def forward_visible(self, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return self.net.forward_visible(self.transform(x), hidden)

    def forward_masked(
        self, x: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.forward_masked(self.transform(x), mask, mask_token)


def build_backbone(name: str, in_chans: int = 3, image_size: int = 224, **kwargs) -> Backbone:
    """Build a backbone by name (see the module docstring for the names)."""
    try:
        return _build(name, in_chans, image_size, **kwargs)
    except TypeError as e:  # backbone.args meant for another backbone (a recipe's ViT args with --backbone convnet)
        raise BackboneError(
            f"backbone {name!r} does not take the arguments {sorted(kwargs)} ({e}); set fitting ones "
            "with --set backbone.args={...}, or {} for none"
        ) from None


def _build(name: str, in_chans: int, image_size: int, **kwargs) -> Backbone:
    if name == "convnet":
        return ConvNet(in_chans, **kwargs)
    if name in TORCHVISION_RESNETS:
        return ResNet(name, in_chans, image_size, **kwargs)
    timm_name = name.removeprefix("timm:")
    if name in VITS or _timm_knows(timm_name):
        return TimmBackbone(timm_name, in_chans, image_size, **kwargs)
    raise BackboneError(f"unknown backbone {name!r}; valid: {', '.join(NAMED)}, or timm:NAME for any timm model")


def _timm_knows(name: str) -> bool:
    import timm

    return timm.is_model(name)
