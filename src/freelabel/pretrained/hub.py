"""Reading a pretrained model's description (a hub name or a ``save_pretrained`` folder): its
transformers config, the view (size, mean, std) of its image processor, and the device and dtype to
load it in. Shared by the loaders of this package."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.views import ViewConfig
from ..errors import PretrainedError

IMAGE_TEXT = ("clip", "siglip", "siglip2")
DETECTORS = ("grounding-dino", "mm-grounding-dino", "owlv2", "owlvit")
SEGMENTERS = ("sam", "sam2", "sam3", "sam3_video")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU that computes in bf16, fp32 elsewhere."""
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16 else torch.float32


def resolve_device_dtype(
    device: str | torch.device | None, dtype: torch.dtype | str | None
) -> tuple[torch.device, torch.dtype]:
    """The device (default: the GPU if any) and dtype (default: :func:`default_dtype`) to load a model in."""
    from ..hardware import default_device

    device = torch.device(device) if device is not None else default_device()
    if isinstance(dtype, str):
        names = {
            "bf16": torch.bfloat16,
            "bfloat16": torch.bfloat16,
            "fp16": torch.float16,
            "float16": torch.float16,
            "fp32": torch.float32,
            "float32": torch.float32,
        }
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
        raise PretrainedError(
            f"cannot load {name_or_folder!r} ({first}); give a local folder, or a hub name "
            "with network access or in the Hugging Face cache"
        ) from e


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
