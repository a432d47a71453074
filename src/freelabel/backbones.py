"""Backbones behind one interface.

Every backbone is an ``nn.Module`` with ``embed_dim``, ``forward(x) -> [B, D]`` (pooled) and
``forward_tokens(x, mask=None) -> [B, N, D]`` (spatial or patch tokens). Names:

- ``convnet``: a small, fast CNN (1.2M parameters) for CPU runs on small images;
- ``resnet18`` ... ``resnet152``: torchvision ResNets, with a 3x3 stride-1 stem and no max-pool
  when the image side is 64 or less (the CIFAR variant);
- ``vit_tiny`` / ``vit_small`` / ``vit_base`` / ``vit_large``: timm ViTs at any ``patch_size`` and
  ``image_size``;
- ``timm:NAME`` (or any other name timm knows): that timm model, headless.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

from .errors import BackboneError

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
VITS = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12), "vit_large": (1024, 24, 16)}
NAMED = {
    "convnet": "small CNN for CPU runs on small images (1.2M params, 256-d)",
    **{n: "torchvision ResNet, small-image stem at <=64 px" for n in TORCHVISION_RESNETS},
    **{n: f"timm ViT, {d}-d, depth {L}, {h} heads; any patch_size" for n, (d, L, h) in VITS.items()},
}


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ConvBackbone(nn.Module):
    """A CNN whose ``features`` map gives the tokens (one per position) and, averaged, the embedding."""

    features: nn.Module
    embed_dim: int

    def forward_tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            raise BackboneError(f"{type(self).__name__} has no tokens to mask; use a ViT backbone for masked methods")
        return self.features(x).flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean((2, 3))


class ConvNet(ConvBackbone):
    """A VGG-style CNN: a stride-2 stem, then stages that halve the resolution and double the width."""

    def __init__(self, in_chans: int = 3, widths: tuple[int, ...] = (64, 128, 256)):
        super().__init__()
        layers = [_conv_bn(in_chans, widths[0], 2), _conv_bn(widths[0], widths[0])]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [_conv_bn(cin, cout, 2), _conv_bn(cout, cout)]
        self.features = nn.Sequential(*layers)
        self.embed_dim = widths[-1]


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
        self.embed_dim = net.fc.in_features
        self.features = nn.Sequential(*list(net.children())[:-2])


class TimmBackbone(nn.Module):
    """Any timm model, headless. ViTs take a ``mask`` in :meth:`forward_tokens`."""

    def __init__(self, name: str, in_chans: int = 3, image_size: int = 224, **kwargs):
        super().__init__()
        import timm

        if name in VITS:
            dim, depth, heads = VITS[name]
            kwargs = {"embed_dim": dim, "depth": depth, "num_heads": heads, "patch_size": 16,
                      "dynamic_img_size": True, **kwargs}  # fmt: skip
            self.model = timm.models.vision_transformer.VisionTransformer(
                img_size=image_size, in_chans=in_chans, num_classes=0, **kwargs)  # fmt: skip
        else:
            extra = {"img_size": image_size} if "vit" in name or "deit" in name else {}
            self.model = timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=0, **extra, **kwargs)
        self.embed_dim = self.model.num_features
        self.is_vit = hasattr(self.model, "patch_embed") and hasattr(self.model, "blocks")

    def forward_tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None,
                       pooled: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Patch tokens ``[B, N, D]``. With ``mask`` (bool ``[B, N]``, True = hidden, the same count in every
        row) the hidden patches are dropped after the position embedding and before the blocks, as MAE's
        and I-JEPA's encoders do: the blocks see only the visible tokens, and ``[B, N_visible, D]`` comes
        back in the patches' order. With a ``mask_token [D]`` hidden patches are instead replaced by it
        before the position embedding and all N are kept (iBOT, DINOv2; any count per row).
        ``pooled=True`` (ViTs) returns ``(pooled [B, D], tokens)`` of one pass, the pooled embedding being
        what :meth:`forward` gives."""
        if not self.is_vit:
            if mask is not None or pooled:
                raise BackboneError(f"{type(self.model).__name__} takes no token mask; use a ViT")
            feats = self.model.forward_features(x)
            return feats.flatten(2).transpose(1, 2) if feats.ndim == 4 else feats
        m = self.model
        x = m.patch_embed(x)
        if mask is not None and mask_token is not None:
            x = torch.where(mask.view(*x.shape[:-1], 1), mask_token.to(x.dtype), x)
        x = m._pos_embed(x)
        prefix = m.num_prefix_tokens
        if mask is not None and mask_token is None:
            shape = [x.shape[0], x.shape[1] - prefix]
            if list(mask.shape) != shape or bool((mask.sum(1) != mask[0].sum()).any()):
                raise BackboneError(f"a token mask must be bool [B, N] = {shape} hiding the same number of patches "
                                    f"in every row; got {list(mask.shape)}")  # fmt: skip
            keep = (~mask).nonzero()[:, 1].view(x.shape[0], -1) + prefix
            index = torch.cat([torch.arange(prefix, device=x.device).expand(x.shape[0], -1), keep], 1)
            x = x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = m.norm(m.blocks(m.norm_pre(x)))
        return (m.forward_head(x, pre_logits=True), x[:, prefix:]) if pooled else x[:, prefix:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def build_backbone(name: str, in_chans: int = 3, image_size: int = 224, **kwargs) -> nn.Module:
    """Build a backbone by name (see the module docstring for the names)."""
    try:
        return _build(name, in_chans, image_size, **kwargs)
    except TypeError as e:  # backbone.args meant for another backbone (a recipe's ViT args with --backbone convnet)
        raise BackboneError(f"backbone {name!r} does not take the arguments {sorted(kwargs)} ({e}); set fitting ones "
                            "with --set backbone.args={...}, or {} for none") from None  # fmt: skip


def _build(name: str, in_chans: int, image_size: int, **kwargs) -> nn.Module:
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
