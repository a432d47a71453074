"""The data sources by name: ``open_dataset(spec, split)`` turns ``--data`` into a dataset.

``spec`` is a name of :data:`NAMED` (the embedded sets, and the captioned emoji set), caption data on
disk (a CSV/JSONL of image,caption, a folder with a ``.txt`` beside each image), WebDataset ``.tar``
shards of images (labelled and/or captioned, streamed: :mod:`.shards`), or a folder of images. A new named source is a function ``(split) -> Dataset`` and a line here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import DataError
from .captions import emoji_captions, is_captioned, open_captions
from .emoji import emoji
from .shards import ImageShards, is_shards
from .sources import fashion_mnist, image_folder

NAMED: dict[str, Callable[[str], Dataset]] = {
    "fashion-mnist": lambda split: fashion_mnist("train" if split == "all" else split),
    "emoji": emoji,
    "emoji-captions": emoji_captions,
}


def open_dataset(spec: str, split: str = "train", size: int | None = None, channels: int = 3) -> Dataset:
    """``spec`` is a named source or a path; ``split`` is ``train``, ``test`` or ``all`` (pretraining on
    a folder uses every image). In-memory sets are resized to ``size`` when it differs."""
    if spec in NAMED:
        ds = NAMED[spec](split)
        if size is not None and size != ds.images.shape[-1]:
            resized = F.interpolate(ds.images.float(), size=size, mode="bilinear", antialias=True)
            ds.images = resized.round().clamp(0, 255).to(torch.uint8)
        return ds
    if is_shards(spec):
        if size is None:
            raise DataError("shards need an image size (data.image_size or views.size in the recipe)")
        return ImageShards(spec, split, size, channels)
    if is_captioned(spec):
        return open_captions(spec, split, size, channels)
    looks_like_path = os.sep in spec or spec.startswith(".") or Path(spec).exists()
    if not looks_like_path:
        raise DataError(f"unknown dataset {spec!r}; valid: {', '.join(NAMED)}, or a folder of images")
    if size is None:
        raise DataError("a folder of images needs an image size (data.image_size in the recipe)")
    return image_folder(spec, split, size, channels)
