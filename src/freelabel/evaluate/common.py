"""What every protocol starts from: one model (a run directory or a pretrained model, opened the same
way), its labelled data, features extracted once and cached on disk, a progress bar, and results
written into the run's ``metrics.json``."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from ..data.views import ViewConfig, resize
from ..errors import DataError
from ..files import atomic_file


@dataclass
class Model:
    """A backbone with the preprocessing it was trained with, and where it came from."""

    backbone: nn.Module
    view: ViewConfig  # size, mean, std of its input
    spec: str  # the run directory or model name it was opened from
    fingerprint: str  # changes whenever the weights do
    channels: int  # image channels its data is decoded with
    image_size: int | None  # size its data is decoded at (None: the data's own)
    data: str  # its default labelled data
    run_dir: Path | None = None

    @property
    def embed_dim(self) -> int:
        return self.backbone.embed_dim

    def input(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8 [B, C, H, W]`` (or floats in [0, 1]) -> the backbone's normalised input."""
        from ..encoder import model_input

        return model_input(images, self.view, self.channels)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.input(images))

    def encode_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_tokens(self.input(images))


def timm_vit(backbone: nn.Module) -> nn.Module | None:
    """The timm VisionTransformer inside a freelabel ViT backbone (``None`` for any other backbone)."""
    vit = getattr(backbone, "model", None)
    return vit if getattr(backbone, "grid", None) is not None and hasattr(vit, "blocks") else None


def load_model(spec: str | Path, trained: bool = True, device: torch.device | str | None = None) -> Model:
    """The one place protocols open a model, through :func:`freelabel.encoder.load_encoder`: a freelabel run
    directory (``trained=False``: the same architecture at the run's seeded random initialisation) or a
    pretrained model (hub name, local transformers folder, ``torchvision:NAME``), in float32 so that it
    can be fine-tuned."""
    from ..encoder import load_encoder

    enc = load_encoder(spec, device=device, dtype=torch.float32, trained=trained)
    cfg = enc.config
    size, data = (cfg.data.image_size or cfg.views.size, cfg.data.name) if cfg is not None else (None, "fashion-mnist")
    return Model(enc.backbone.eval(), enc.view, str(spec), enc.fingerprint, enc.in_chans, size, data, enc.run_dir)


def open_split(model: Model, data: str, split: str) -> Dataset:
    """A labelled split of ``data`` decoded the way ``model`` was trained (embedded sets stay at their size
    for pretrained models and are resized batch by batch)."""
    from ..data.registry import NAMED, open_dataset

    size = model.image_size or (None if data in NAMED else model.view.size)
    return open_dataset(data, split, size, model.channels)


def labels_of(ds: Dataset) -> torch.Tensor:
    """The labels of a labelled data set; an unlabelled one is an error naming the fix."""
    labels = ds.labels if isinstance(ds.labels, torch.Tensor) else torch.tensor(ds.labels)
    if (labels < 0).any():
        raise DataError("this protocol needs labels: use a folder with one sub-folder per class")
    return labels


def autocast_enabled(device: torch.device) -> bool:
    from ..hardware import resolve_precision

    return resolve_precision("auto", device.type).startswith("bf16")


@contextmanager
def progress_bar(description: str, total: float) -> Iterator[Callable[[float], None]]:
    """A rich progress bar (as the engine's); yields ``update(completed)``."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda completed: bar.update(task, completed=completed)


def progress(items: Iterable, total: int, description: str) -> Iterator:
    """``items`` with a progress bar."""
    with progress_bar(description, total) as update:
        for i, item in enumerate(items):
            yield item
            update(i + 1)


@torch.no_grad()
def extract(
    model: Model | None, ds: Dataset, tokens: bool = False, batch_size: int = 256, size: int = 28
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features (``tokens``: patch tokens ``[N, T, D]``) of every image of ``ds`` and their labels;
    ``model=None`` gives the raw pixels in [0, 1] at ``size``."""
    from ..data.loader import sequential

    device = next(model.backbone.parameters()).device if model is not None else torch.device("cpu")
    if model is not None:
        model.backbone.eval()
    feats, labels = [], []
    n = (len(ds) + batch_size - 1) // batch_size
    for batch in progress(sequential(ds, batch_size), n, f"features of {len(ds)} images"):
        if not len(batch.images):  # every image of the batch unreadable
            continue
        if model is None:
            feats.append(resize(batch.images, size).flatten(1))
        else:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_enabled(device)):
                images = batch.images.to(device)
                f = model.encode_tokens(images) if tokens else model.encode_image(images)
            feats.append(f.float().cpu())
        labels.append(batch.labels)
    if not feats:
        raise DataError(
            f"none of the {len(ds)} images could be read" if len(ds) else "a split of the data holds no images"
        )
    return torch.cat(feats), torch.cat(labels)


def cache_root(model: Model | None) -> Path:
    from ..data.sources import cache_dir

    return model.run_dir / "features" if model is not None and model.run_dir else cache_dir() / "features"


def cached_features(
    model: Model | None, data: str, split: str, ds: Dataset, size: int = 28, tokens: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`extract`, kept on disk keyed by the model's fingerprint, the data and the split, so that a
    second protocol (or a second run of one) reads instead of recomputing."""
    key = model.fingerprint if model is not None else f"pixels{size}"
    source = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(Path(data).expanduser().resolve()) if Path(data).exists() else data)
    kind = "tokens" if tokens else "pooled"
    path = cache_root(model) / f"{key}-{source.strip('_')[-60:]}-{split}-{len(ds)}-{kind}.safetensors"
    if path.is_file():
        t = load_file(str(path))
        return t["features"], t["labels"]
    feats, labels = extract(model, ds, tokens, size=size)
    with atomic_file(path, feats.numel() * feats.element_size()) as tmp:
        save_file({"features": feats.contiguous(), "labels": labels.contiguous()}, str(tmp))
    return feats, labels


def record(model: Model, section: str, results: dict) -> None:
    """Merge ``results`` into the run's ``metrics.json[section]`` (pretrained models have no run to write to)."""
    from ..run import update_metrics

    if model.run_dir is not None:
        update_metrics(model.run_dir, section, results)


def class_names(ds: Dataset, n: int) -> list[str]:
    names = list(getattr(ds, "classes", []) or [])
    return names if len(names) == n else [str(i) for i in range(n)]
