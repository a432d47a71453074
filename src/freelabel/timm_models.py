"""freelabel's own CNN backbones as timm models, so that ``timm.create_model`` builds them:

    import freelabel.timm_models  # registers freelabel_convnet and freelabel_resnet with timm
    model = timm.create_model("freelabel_convnet", pretrained=True, pretrained_cfg_overlay={"file": ...}, ...)

The model is the run's backbone as its method builds it (colorization's lightness input and jigsaw's
per-image standardisation included), with timm's interface: ``forward`` gives the pooled features,
``forward_features`` the spatial tokens ``[B, N, D]``, ``forward_head`` pools them (and classifies
when ``num_classes`` > 0). Grey runs take RGB input and average it: see :func:`rgb_stem`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .data.views import ViewConfig


class ChannelMean(nn.Module):
    """A grey backbone that takes RGB: it sees the mean of the channels."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.embed_dim = net, net.embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.mean(1, keepdim=True))

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_tokens(x.mean(1, keepdim=True))


def rgb_stem(backbone: nn.Module) -> nn.Module:
    """A grey (1-channel) backbone that takes RGB and averages it: a grey image replicated to RGB gives
    the grey image's features. A timm model keeps its own layout (as timm and transformers load it):
    its first convolution gets three input channels, each with a third of the grey weights; other
    backbones see the channels' mean (exact, and right for input wrappers such as jigsaw's standardisation)."""
    from .backbones import TimmBackbone

    if not isinstance(backbone, TimmBackbone):
        return ChannelMean(backbone)
    name, conv = next((n, m) for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d))
    backbone = copy.deepcopy(backbone)
    rgb = nn.Conv2d(
        3,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        conv.padding_mode,
    )
    with torch.no_grad():
        rgb.weight.copy_(conv.weight.expand(-1, 3, -1, -1) / 3)
        if conv.bias is not None:
            rgb.bias.copy_(conv.bias)
    parent, _, leaf = name.rpartition(".")
    setattr(backbone.get_submodule(parent), leaf, rgb)
    return backbone


class FreelabelCNN(nn.Module):
    """A freelabel run's CNN backbone with timm's model interface."""

    def __init__(
        self,
        arch: str = "convnet",
        method: str = "simclr",
        image_size: int = 224,
        mean: tuple[float, ...] = (0.5,),
        std: tuple[float, ...] = (0.5,),
        grey: bool = False,
        in_chans: int = 3,
        num_classes: int = 0,
        **args,
    ):
        super().__init__()
        from .methods import METHODS

        if in_chans != 3:
            raise ValueError("freelabel's timm models take RGB (a grey run's model averages the channels)")
        views = ViewConfig(size=image_size, mean=tuple(mean), std=tuple(std))
        backbone = METHODS[method].make_backbone(arch, 1 if grey else 3, views, **args)
        self.backbone = rgb_stem(backbone) if grey else backbone
        self.num_features = self.head_hidden_size = backbone.embed_dim
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_tokens(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()


default_cfgs = generate_default_cfgs(
    {
        name: {"num_classes": 0, "classifier": "head", "first_conv": "", "mean": (0.5,) * 3, "std": (0.5,) * 3}
        for name in ("freelabel_convnet", "freelabel_resnet")
    }
)


@register_model
def freelabel_convnet(pretrained: bool = False, **kwargs) -> FreelabelCNN:
    """freelabel's small CPU CNN (``convnet``)."""
    return build_model_with_cfg(FreelabelCNN, "freelabel_convnet", pretrained, arch="convnet", **kwargs)


@register_model
def freelabel_resnet(pretrained: bool = False, **kwargs) -> FreelabelCNN:
    """freelabel's torchvision ResNets (``arch``: resnet18 ... resnet152), small-image stem at <= 64 px."""
    return build_model_with_cfg(FreelabelCNN, "freelabel_resnet", pretrained, **{"arch": "resnet50", **kwargs})
