"""Foundation models through Hugging Face transformers, one call away: ``load(NAME_OR_FOLDER)``.

The config's ``model_type`` picks what comes back:

- vision backbones (DINOv2 with or without registers, DINOv3 ViT and ConvNeXt, ViT, and any other
  model transformers' ``AutoModel`` knows as an image model) in freelabel's backbone interface:
  ``embed_dim``, ``forward(x) -> [B, D]``, ``forward_tokens(x) -> [B, N, D]`` (patch tokens, without
  CLS or registers), and ``view``, the :class:`~freelabel.data.views.ViewConfig` (size, mean, std)
  that :func:`freelabel.data.views.normalise` uses to turn ``uint8`` images into the model's input;
- image-text models (CLIP, SigLIP, SigLIP2): the same, plus ``encode_image`` and ``encode_text`` of
  :class:`freelabel.evaluate.zeroshot.ImageTextModel`;
- detectors (Grounding DINO, OWL-ViT/OWLv2) and segmenters (SAM, SAM2, SAM3): whatever
  :func:`freelabel.pretrained.detection.load_detector` and
  :func:`freelabel.pretrained.segmentation.load_segmenter` return.

``torchvision:NAME`` (with ``weights=PATH`` to a torchvision state dict) loads a torchvision
classifier such as MobileNetV2 as a backbone that keeps its ImageNet ``classifier``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.views import ViewConfig

IMAGE_TEXT = ("clip", "siglip", "siglip2")
DETECTORS = ("grounding-dino", "mm-grounding-dino", "owlv2", "owlvit")
SEGMENTERS = ("sam", "sam2", "sam3", "sam3_video")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class PretrainedError(ValueError):
    """A model that cannot be found, loaded, or used the way it was asked."""


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU that computes in bf16, fp32 elsewhere."""
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16 else torch.float32


def resolve_device_dtype(device: str | torch.device | None, dtype: torch.dtype | str | None) -> tuple[torch.device, torch.dtype]:  # fmt: skip
    """The device (default: the GPU if any) and dtype (default: :func:`default_dtype`) to load a model in."""
    from ..hardware import default_device

    device = torch.device(device) if device is not None else default_device()
    if isinstance(dtype, str):
        names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
                 "fp32": torch.float32, "float32": torch.float32}  # fmt: skip
        if dtype not in names:
            raise PretrainedError(f"dtype must be one of {', '.join(names)}, not {dtype!r}")
        dtype = names[dtype]
    return device, dtype or default_dtype(device)


def read_config(name_or_folder: str | Path):
    """The transformers config of a local folder or a hub name, with errors that say what to do."""
    from transformers import AutoConfig

    path = Path(name_or_folder).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise PretrainedError(f"{path} has no config.json; give a folder written by save_pretrained or a hub name")
    if not path.exists() and (str(name_or_folder).startswith((".", "/", "~")) or str(name_or_folder).count("/") > 1):
        raise PretrainedError(f"no such model folder: {name_or_folder}")
    try:
        return AutoConfig.from_pretrained(str(path) if path.is_dir() else str(name_or_folder))
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PretrainedError(f"cannot load {name_or_folder!r} ({first}); give a local folder, or a hub name "
                              "with network access or in the Hugging Face cache") from e  # fmt: skip


def processor_view(
    name_or_folder: str | Path, config, default_mean=IMAGENET_MEAN, default_std=IMAGENET_STD
) -> ViewConfig:
    """The evaluation view (square side, mean, std) of the model's image processor, or the config's
    ``image_size`` and ``default_mean``/``default_std`` when it has none."""
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(str(name_or_folder))
    except (OSError, ValueError, KeyError, TypeError):
        proc = None
    vision = getattr(config, "vision_config", None) or config
    size = getattr(vision, "image_size", 224)
    if proc is not None and getattr(proc, "max_num_patches", None):  # SigLIP2 NaFlex: the square that fits
        size = proc.patch_size * int(proc.max_num_patches**0.5)
    elif proc is not None:
        s = (getattr(proc, "crop_size", None) if getattr(proc, "do_center_crop", False) else None) or proc.size or {}
        s = dict(s) if not isinstance(s, int) else {"height": s}
        size = s.get("height") or s.get("shortest_edge") or size
    mean = tuple(getattr(proc, "image_mean", None) or default_mean)
    std = tuple(getattr(proc, "image_std", None) or default_std)
    return ViewConfig(size=int(size), mean=mean, std=std)


def load(name_or_folder: str | Path, device: str | torch.device | None = None,
         dtype: torch.dtype | str | None = None, **kwargs):  # fmt: skip
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
    raise PretrainedError(f"unknown model type {kind!r} of {name}; freelabel loads vision backbones (DINOv2, DINOv3, "
                          "ViT, ...), image-text models (" + ", ".join(IMAGE_TEXT) + "), detectors ("
                          + ", ".join(DETECTORS) + ") and segmenters (" + ", ".join(SEGMENTERS) + ")")  # fmt: skip


def is_pretrained_name(spec: str | Path) -> bool:
    """True when ``spec`` names a pretrained model rather than a freelabel run directory."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return (path / "config.json").is_file() and not (path / "config.yaml").is_file()
    return not path.exists()  # a hub name or torchvision:NAME


def model_input(images: torch.Tensor, view: ViewConfig) -> torch.Tensor:
    """``uint8 [B, C, H, W]`` of any size -> the model's input: the centre square, resized to
    ``view.size`` and normalised (grey images become three equal channels)."""
    from ..data.views import normalise

    h, w = images.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = normalise(images[..., top : top + s, left : left + s], view)
    return x.expand(-1, len(view.mean), -1, -1) if x.shape[1] == 1 else x
