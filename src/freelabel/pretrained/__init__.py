"""Foundation models through Hugging Face transformers, one call away: ``load(NAME_OR_FOLDER)``.

The config's ``model_type`` picks what comes back:

- vision backbones (DINOv2 with or without registers, DINOv3 ViT and ConvNeXt, ViT, and any other
  model transformers' ``AutoModel`` knows as an image model) in freelabel's backbone interface:
  ``embed_dim``, ``forward(x) -> [B, D]``, ``forward_tokens(x) -> [B, N, D]`` (patch tokens, without
  CLS or registers), and ``view``, the :class:`~freelabel.data.views.ViewConfig` (size, mean, std)
  its input is made with (:func:`freelabel.encoder.load_encoder` wraps them with that preprocessing);
- image-text models (CLIP, SigLIP, SigLIP2): the same, plus ``encode_text``;
- detectors (Grounding DINO, OWL-ViT/OWLv2) and segmenters (SAM, SAM2, SAM3): whatever
  :func:`freelabel.pretrained.detection.load_detector` and
  :func:`freelabel.pretrained.segmentation.load_segmenter` return.

``torchvision:NAME`` (with ``weights=PATH`` to a torchvision state dict) loads a torchvision
classifier such as MobileNetV2 as a backbone that keeps its ImageNet ``classifier``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import PretrainedError
from .hub import (
    DETECTORS,
    IMAGE_TEXT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SEGMENTERS,
    default_dtype,
    processor_view,
    read_config,
    resolve_device_dtype,
)


def load(
    name_or_folder: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    **kwargs,
):
    """Load a pretrained model by hub name or local folder (see the module docstring for what comes
    back), in eval mode on ``device`` (default: the GPU if any) in ``dtype`` (default: bf16 on a GPU,
    fp32 on the CPU). ``kwargs`` go to the detector/segmenter loaders, or ``weights=`` for torchvision."""
    name = str(name_or_folder)
    if name.startswith("torchvision:"):
        from .vision import load_torchvision

        return load_torchvision(name.removeprefix("torchvision:"), *resolve_device_dtype(device, dtype), **kwargs)
    config = read_config(name_or_folder)
    kind = config.model_type
    if kind in DETECTORS:
        from .detection import load_detector

        return load_detector(name_or_folder, device=device, dtype=dtype, **kwargs)
    if kind in SEGMENTERS:
        from .segmentation import load_segmenter

        return load_segmenter(name_or_folder, device=device, dtype=dtype, **kwargs)
    if kind in IMAGE_TEXT:
        from .imagetext import load_image_text

        return load_image_text(name_or_folder, config, *resolve_device_dtype(device, dtype))
    from .vision import VISION_TYPES, load_vision

    if kind in VISION_TYPES:
        return load_vision(name_or_folder, config, *resolve_device_dtype(device, dtype))
    raise PretrainedError(
        f"unknown model type {kind!r} of {name}; freelabel loads vision backbones (DINOv2, DINOv3, "
        "ViT, ...), image-text models ("
        + ", ".join(IMAGE_TEXT)
        + "), detectors ("
        + ", ".join(DETECTORS)
        + ") and segmenters ("
        + ", ".join(SEGMENTERS)
        + ")"
    )


__all__ = [
    "DETECTORS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_TEXT",
    "SEGMENTERS",
    "PretrainedError",
    "default_dtype",
    "load",
    "processor_view",
    "read_config",
    "resolve_device_dtype",
]
