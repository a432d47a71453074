"""Pretrained vision backbones in freelabel's backbone interface.

- :class:`HFBackbone`: any transformers image model (DINOv2 with or without registers, DINOv3 ViT and
  ConvNeXt, ViT, ConvNeXt, ResNet, Swin, ...). ``forward`` is the CLS token of the last, normalised
  layer (what DINO-style k-NN uses), or the model's pooled output for models without one;
  ``forward_tokens`` the patch tokens, CLS and registers dropped.
- :class:`TorchvisionClassifier`: a torchvision ImageNet classifier (MobileNetV2/V3, EfficientNet)
  whose ``classifier`` stays reachable: ``logits(x)`` gives the ImageNet class scores.

Both carry ``view``, the size/mean/std their input is made with (:func:`freelabel.data.views.normalise`).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torch.nn as nn
import torchvision
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_MAPPING_NAMES

from ..backbones import ConvBackbone
from ..data.views import ViewConfig
from ..errors import PretrainedError
from .hub import IMAGENET_MEAN, IMAGENET_STD, processor_view

VISION_TYPES = tuple(MODEL_FOR_IMAGE_MAPPING_NAMES)
FAMILIES = {"dinov2": "DINOv2", "dinov2_with_registers": "DINOv2", "dinov3_vit": "DINOv3", "dinov3_convnext": "DINOv3"}


class HFBackbone(nn.Module):
    """A transformers image model behind freelabel's backbone interface."""

    def __init__(self, model: nn.Module, view: ViewConfig, name: str):
        super().__init__()
        self.model, self.view, self.name = model, view, name
        cfg = model.config
        self.family = FAMILIES.get(cfg.model_type, cfg.model_type)
        self.embed_dim = getattr(cfg, "hidden_size", None) or cfg.hidden_sizes[-1]

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled ``[B, D]``, patch tokens ``[B, N, D]``)."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        out = self.model(pixel_values=x.to(next(self.model.parameters()).dtype))
        h = out.last_hidden_state
        if h.ndim == 4:  # convolutional feature map
            tokens = h.flatten(2).transpose(1, 2)
            pooled = out.pooler_output.flatten(1) if getattr(out, "pooler_output", None) is not None else tokens.mean(1)
            return pooled, tokens
        patch = getattr(self.model.config, "patch_size", None)
        if isinstance(patch, int):  # whatever precedes the patches is CLS and registers
            prefix = max(0, h.shape[1] - (x.shape[-2] // patch) * (x.shape[-1] // patch))
        else:
            prefix = 1 + getattr(self.model.config, "num_register_tokens", 0)
        tokens = h[:, prefix:]
        return (h[:, 0] if prefix else tokens.mean(1)), tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)[0]

    def forward_tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            raise PretrainedError("pretrained backbones take no token mask")
        return self._run(x)[1]


class TorchvisionClassifier(ConvBackbone):
    """A torchvision classifier with ``features`` and ``classifier`` (MobileNetV2/V3, EfficientNet):
    ``forward`` is the globally pooled feature map, ``logits`` adds the ImageNet ``classifier``."""

    def __init__(self, net: nn.Module, name: str):
        super().__init__()
        self.features, self.classifier, self.name, self.family = net.features, net.classifier, name, name
        self.embed_dim = next(m for m in self.classifier.modules() if isinstance(m, nn.Linear)).in_features
        self.view = ViewConfig(size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self(x))


def load_vision(name_or_folder: str | Path, config, device: torch.device, dtype: torch.dtype) -> HFBackbone:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(name_or_folder), dtype=dtype).to(device).eval()
    return HFBackbone(model, processor_view(name_or_folder, config), str(name_or_folder))


def load_torchvision(
    name: str, device: torch.device, dtype: torch.dtype, weights: str | Path | None = None
) -> TorchvisionClassifier:
    """torchvision model ``name`` with the state dict at ``weights`` (``None``: torchvision's default
    ImageNet weights, downloaded to or read from the torch hub cache)."""
    builder = getattr(torchvision.models, name, None)
    if builder is None or not callable(builder):
        raise PretrainedError(f"torchvision has no model {name!r}")
    if weights is None:
        try:
            net = builder(weights="DEFAULT")
        except Exception as e:  # no network and nothing cached
            raise PretrainedError(f"cannot get torchvision's {name} weights ({e}); pass weights=PATH") from e
    else:
        net = builder(weights=None)
        try:
            net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except (OSError, RuntimeError, pickle.UnpicklingError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PretrainedError(f"cannot use {weights} as torchvision's {name} weights ({first})") from None
    if not (hasattr(net, "features") and hasattr(net, "classifier")):
        raise PretrainedError(f"torchvision:{name} is not a features + classifier network (try mobilenet_v2)")
    return TorchvisionClassifier(net, f"torchvision:{name}").to(device, dtype).eval()
