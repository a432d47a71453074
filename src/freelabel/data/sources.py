"""Image sources: the embedded Fashion-MNIST and emoji (:mod:`.emoji`) sets and any folder of images.

Every source is a map-style ``torch.utils.data.Dataset`` whose items are ``(image, label)`` with
``image`` a ``uint8`` tensor ``[C, H, W]`` of a fixed size and ``label`` an ``int`` (``-1`` when
the source has no labels). Augmentation happens later, batched, on the model's device
(:mod:`freelabel.data.views`), so sources only decode.
"""

from __future__ import annotations

import gzip
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..errors import DataError
from .images import IMAGE_EXTENSIONS, BadImage, load_image

log = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
EMBEDDED = {
    "fashion-mnist": "Fashion-MNIST, 70k 28x28 grey images of clothes in 10 classes",
    "emoji": "Google's Noto emoji (npm emoji-datasource-google), 1.9k 64x64 colour images in 10 categories",
}


def cache_dir() -> Path:
    return Path(os.environ.get("FREELABEL_CACHE", Path.home() / ".cache" / "freelabel"))


@dataclass
class TensorImages(Dataset):
    """A whole data set held in memory as one ``uint8`` tensor ``[N, C, H, W]``."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    @property
    def channels(self) -> int:
        return self.images.shape[1]


def sample(ds: Dataset, n: int, seed: int = 0) -> tuple[Dataset, torch.Tensor]:
    """A seeded sample of ``n`` items of ``ds`` (all of them when it has fewer), in their order, and which
    items they are."""
    items = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    if isinstance(ds, TensorImages):
        texts = [ds.texts[i] for i in items.tolist()] if getattr(ds, "texts", None) else None
        part = TensorImages(ds.images[items], ds.labels[items], ds.classes)
        if texts:
            part.texts = texts
        return part, items
    return Subset(ds, items.tolist()), items


# ---------------------------------------------------------------------------------- Fashion-MNIST
_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _fashion_mnist_dirs() -> list[Path]:
    dirs = [Path(os.environ["FREELABEL_FASHION_MNIST"])] if "FREELABEL_FASHION_MNIST" in os.environ else []
    return dirs + [Path("/usr/share/datasets/fashion-mnist"), cache_dir() / "FashionMNIST" / "raw"]


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(name: str) -> Path | None:
    for d in _fashion_mnist_dirs():
        for candidate in (d / name, d / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def fashion_mnist(split: str = "train") -> TensorImages:
    """Fashion-MNIST from the Debian package's folder or the cache; downloaded when missing."""
    if split not in _FMNIST_FILES:
        raise DataError(f"fashion-mnist has splits 'train' and 'test', not {split!r}")
    names = _FMNIST_FILES[split]
    paths = [_find_idx(n) for n in names]
    if None in paths:
        _download_fashion_mnist()
        paths = [_find_idx(n) for n in names]
    images = torch.from_numpy(_read_idx(paths[0]).copy()).unsqueeze(1)
    labels = torch.from_numpy(_read_idx(paths[1]).astype(np.int64))
    return TensorImages(images, labels, FASHION_MNIST_CLASSES)


def _download_fashion_mnist() -> None:
    from torchvision.datasets import FashionMNIST

    log.info("Fashion-MNIST not found in %s; downloading", ", ".join(map(str, _fashion_mnist_dirs())))
    try:
        FashionMNIST(str(cache_dir()), train=True, download=True)
        FashionMNIST(str(cache_dir()), train=False, download=True)
    except Exception as e:  # no network, blocked host, ...
        raise DataError(
            f"Fashion-MNIST is not installed and could not be downloaded ({e}). Install it with "
            "`apt-get install dataset-fashion-mnist`, or set FREELABEL_FASHION_MNIST to a folder "
            "holding the four IDX files."
        ) from None


# ---------------------------------------------------------------------------------- image folders
class ImageFiles(Dataset):
    """Images in a folder: class sub-folders give labels, a flat folder gives none (label -1).

    Items that fail to decode (:func:`.images.decode`: broken, or over the size limits) come back as
    ``None`` and are dropped by :func:`collate`, which reports their paths so that the caller can
    count them.
    """

    def __init__(
        self, paths: list[Path], labels: list[int], classes: list[str], size: int, channels: int = 3, ignored: int = 0
    ):
        self.paths, self.labels, self.classes = paths, labels, classes
        self.size, self.channels, self.ignored = size, channels, ignored

    def __len__(self) -> int:
        return len(self.paths)

    def item(self, i: int, crops=None, g: torch.Generator | None = None) -> tuple:
        """Item ``i`` as ``(image, label)``; with ``crops`` (a :class:`~.crops.RandomCrops`) and its
        generator ``g``, as ``([crop of each view], label)``: random crops from the whole image."""
        try:
            path = self.paths[i]
            image = crops.read(path, g) if crops else load_image(path, self.size, self.channels)
        except (BadImage, OSError):
            return None, str(self.paths[i])
        return image, self.labels[i]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | tuple[None, str]:
        return self.item(i)


def scan_folder(root: Path) -> tuple[list[Path], list[int], list[str], int]:
    """Image paths, labels and class names under ``root``, plus the count of non-image files."""
    if not root.exists():
        raise DataError(
            f"data folder {root} does not exist; give --data a folder of images or one of: {', '.join(EMBEDDED)}"
        )
    if not root.is_dir():
        raise DataError(f"--data {root} is a file; give a folder of images or one of: {', '.join(EMBEDDED)}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not images:
        raise DataError(f"no images ({'/'.join(IMAGE_EXTENSIONS)}) found under {root}")
    subdirs = sorted({p.relative_to(root).parts[0] for p in images if len(p.relative_to(root).parts) > 1})
    flat = any(len(p.relative_to(root).parts) == 1 for p in images)
    if subdirs and not flat:
        index = {c: i for i, c in enumerate(subdirs)}
        labels = [index[p.relative_to(root).parts[0]] for p in images]
        return images, labels, subdirs, len(files) - len(images)
    return images, [-1] * len(images), [], len(files) - len(images)


def image_folder(
    root: str | Path, split: str, size: int, channels: int = 3, holdout: float = 0.2, seed: int = 0
) -> ImageFiles:
    """A folder as a split: ``root/train`` and ``root/val`` (or ``test``) when present, otherwise a
    seeded, per-class ``holdout`` fraction of ``root`` is the test split."""
    root = Path(root).expanduser()
    if (root / "train").is_dir():
        if split == "train":
            folder = root / "train"
        else:
            folder = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
            if folder is None:
                raise DataError(f"{root} has train/ but neither val/ nor test/ for evaluation")
        paths, labels, classes, ignored = scan_folder(folder)
        return ImageFiles(paths, labels, classes, size, channels, ignored)
    paths, labels, classes, ignored = scan_folder(root)
    if split == "all" or not classes:  # nothing to hold out for an unlabelled folder
        return ImageFiles(paths, labels, classes, size, channels, ignored)
    rng = random.Random(seed)
    chosen: list[int] = []
    for c in sorted(set(labels)):
        members = [i for i, label in enumerate(labels) if label == c]
        rng.shuffle(members)
        test = set(members[: round(len(members) * holdout)])
        chosen += [i for i in members if (i in test) == (split != "train")]
    chosen.sort()
    return ImageFiles([paths[i] for i in chosen], [labels[i] for i in chosen], classes, size, channels, ignored)
