"""What every protocol starts from: one model (a run directory or a pretrained model, opened the same
way, as an :class:`~freelabel.encoder.Encoder`), its labelled data, a progress bar, and results written
into the run's ``metrics.json``; features come from :mod:`.features`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..encoder import Encoder, load_encoder
from ..errors import DataError


def timm_vit(backbone: nn.Module) -> nn.Module | None:
    """The timm VisionTransformer inside a freelabel ViT backbone (``None`` for any other backbone)."""
    vit = getattr(backbone, "model", None)
    return vit if getattr(backbone, "grid", None) is not None and hasattr(vit, "blocks") else None


def load_model(spec: str | Path, trained: bool = True, device: torch.device | str | None = None) -> Encoder:
    """The one place protocols open a model, through :func:`freelabel.encoder.load_encoder`: a freelabel run
    directory (``trained=False``: the same architecture at the run's seeded random initialisation) or a
    pretrained model (hub name, local transformers folder, ``torchvision:NAME``), in float32 so that it
    can be fine-tuned."""
    enc = load_encoder(spec, device=device, dtype=torch.float32, trained=trained)
    enc.backbone.eval()
    return enc


def open_split(model: Encoder, data: str, split: str) -> Dataset:
    """A labelled split of ``data`` decoded the way ``model`` was trained (embedded sets stay at their size
    for pretrained models and are resized batch by batch)."""
    from ..data.registry import NAMED, open_dataset

    size = model.decode_size or (None if data in NAMED else model.view.size)
    return open_dataset(data, split, size, model.in_chans)


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
    """A rich progress bar on stderr (as the engine's: stdout stays the command's output); yields
    ``update(completed)``."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda completed: bar.update(task, completed=completed)


def progress(items: Iterable, total: int, description: str) -> Iterator:
    """``items`` with a progress bar."""
    with progress_bar(description, total) as update:
        for i, item in enumerate(items):
            yield item
            update(i + 1)


def record(model: Encoder, section: str, results: dict) -> None:
    """Merge ``results`` into the run's ``metrics.json[section]`` (pretrained models have no run to write to)."""
    from ..run import update_metrics

    if model.run_dir is not None:
        update_metrics(model.run_dir, section, results)


def class_names(ds: Dataset, n: int) -> list[str]:
    names = list(getattr(ds, "classes", []) or [])
    return names if len(names) == n else [str(i) for i in range(n)]
