"""The data sources by name: ``open_dataset(spec, split)`` turns ``--data`` into a dataset.

``spec`` is a name of :data:`NAMED` (the embedded sets, and the captioned emoji set), caption data on
disk (a CSV/JSONL of image,caption, a folder with a ``.txt`` beside each image), WebDataset ``.tar``
shards of images (labelled and/or captioned, streamed: :mod:`.shards`), a ``.txt`` file list
(:func:`file_list`), or a folder of images. A new named source is a function ``(split) -> Dataset`` and a line here.
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
from .sources import ImageFiles, TensorImages, fashion_mnist, image_folder

NAMED: dict[str, Callable[[str], Dataset]] = {
    "fashion-mnist": lambda split: fashion_mnist("train" if split == "all" else split),
    "emoji": emoji,
    "emoji-captions": emoji_captions,
}


def open_dataset(
    spec: str, split: str = "train", size: int | None = None, channels: int = 3, allow_outside: bool = False
) -> Dataset:
    """``spec`` is a named source or a path; ``split`` is ``train``, ``test`` or ``all`` (pretraining on
    a folder uses every image). In-memory sets are resized to ``size`` when it differs. ``allow_outside``
    lets a CSV/JSONL caption list name images outside its own folder."""
    if str(spec).endswith(".txt") and Path(spec).expanduser().is_file():
        return file_list(spec, split, size, channels)
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
        return open_captions(spec, split, size, channels, allow_outside)
    looks_like_path = os.sep in spec or spec.startswith(".") or Path(spec).exists()
    if not looks_like_path:
        raise DataError(f"unknown dataset {spec!r}; valid: {', '.join(NAMED)}, or a folder of images")
    if size is None:
        raise DataError("a folder of images needs an image size (data.image_size in the recipe)")
    return image_folder(spec, split, size, channels)


def file_list(path: str | Path, split: str, size: int | None, channels: int = 3) -> Dataset:
    """A ``.txt`` list of images, one a line (``freelabel curate`` writes them): image files (absolute, or
    relative to the list's folder), each optionally followed by a tab and its class, or items of a named
    set as ``NAME/SPLIT/INDEX`` (``fashion-mnist/train/000123``), whose labels come with them. The list
    is the ``train`` (and ``all``) split; ``test`` is the named set's own test split, and a list of files
    has none."""
    path = Path(path).expanduser()
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines:
        raise DataError(f"the file list {path} names no images")
    parts = [ln.split("/") for ln in lines]
    if all(len(p) == 3 and p[0] in NAMED and p[2].isdigit() for p in parts):
        sources = {(p[0], p[1]) for p in parts}
        if len(sources) > 1:
            raise DataError(f"the file list {path} mixes {sorted(sources)}; one named set and split per list")
        ((name, list_split),) = sources
        if split == "test":
            return open_dataset(name, "test", size, channels)
        ds = open_dataset(name, list_split, size, channels)
        idx = torch.tensor([int(p[2]) for p in parts])
        if int(idx.max()) >= len(ds):
            raise DataError(
                f"the file list {path} names item {int(idx.max())} of {name}/{list_split}, which has {len(ds)}"
            )
        return TensorImages(ds.images[idx], ds.labels[idx], ds.classes)
    if split == "test":
        raise DataError(f"the file list {path} is a training set; evaluate on a folder or a named set")
    if size is None:
        raise DataError("a file list of images needs an image size (data.image_size in the recipe)")
    files = [(ln.split("\t", 1) + [None])[:2] for ln in lines]
    paths = [Path(f).expanduser() if Path(f).expanduser().is_absolute() else path.parent / f for f, _ in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"the file list {path} names {len(missing)} missing files, e.g. {missing[0]}")
    classes = sorted({c for _, c in files if c})
    labels = [classes.index(c) if c else -1 for _, c in files]
    return ImageFiles(paths, labels, classes, size, channels)
