"""Weighted k-nearest-neighbour classification on frozen features (as in DINO, Caron et al. 2021).

Features are L2-normalised; a test image's ``k`` nearest training images (cosine similarity) vote
for their class with weight ``exp(similarity / T)``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..data.loader import sequential
from ..data.sources import DataError
from ..data.views import ViewConfig, normalise, resize

log = logging.getLogger("freelabel")


def knn_predict(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, ks: tuple[int, ...] = (20, 200),
                temperature: float = 0.07, chunk: int = 512) -> dict[int, torch.Tensor]:  # fmt: skip
    """Predicted class of every test row for each ``k``; features need not be normalised."""
    if not ks or min(ks) < 1:
        raise ValueError(f"k-NN needs every k >= 1, got {list(ks)}")
    if not len(train) or not len(test):
        raise ValueError("k-NN needs at least one training and one test image")
    train, test = F.normalize(train.float(), dim=1), F.normalize(test.float(), dim=1)
    n_classes = int(train_labels.max()) + 1
    k_max = min(max(ks), len(train))
    preds: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for s in range(0, len(test), chunk):
        sim, idx = (test[s : s + chunk] @ train.T).topk(k_max, dim=1)
        weight = (sim / temperature).exp()
        votes_of = F.one_hot(train_labels[idx], n_classes).float() * weight.unsqueeze(-1)  # [b, k, C]
        for k in ks:
            preds[k].append(votes_of[:, : min(k, k_max)].sum(1).argmax(1))
    return {k: torch.cat(p) for k, p in preds.items()}


def knn_accuracy(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
                 ks: tuple[int, ...] = (20, 200), temperature: float = 0.07) -> dict[str, float]:  # fmt: skip
    """Top-1 accuracy (%) for each ``k``, as ``{"top1_k20": ..., "top1_k200": ...}``."""
    preds = knn_predict(train, train_labels, test, ks, temperature)
    return {f"top1_k{k}": 100.0 * (p == test_labels).float().mean().item() for k, p in preds.items()}


@torch.no_grad()
def extract_features(backbone: nn.Module | None, ds: Dataset, view: ViewConfig, device: torch.device | str = "cpu",
                     batch_size: int = 512, autocast: bool = False, workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Pooled features of every image (``backbone=None``: the normalised pixels) and their labels."""
    was_training = backbone.training if backbone is not None else False
    if backbone is not None:
        backbone.eval()
    feats, labels = [], []
    device = torch.device(device)
    for batch in sequential(ds, batch_size, workers):
        if not len(batch.images):  # every image of the batch unreadable
            continue
        if backbone is None:  # raw pixels in [0, 1]
            f = resize(batch.images.to(device), view.size).flatten(1)
        else:
            x = normalise(batch.images.to(device), view)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                f = backbone(x.contiguous(memory_format=torch.channels_last))
        feats.append(f.float().cpu())
        labels.append(batch.labels)
    if backbone is not None:
        backbone.train(was_training)
    if not feats:
        raise DataError(f"none of the {len(ds)} images could be read" if len(ds) else
                        "a split of the data holds no images (too few per class for a held-out fifth?); give more images")
    feats, labels = torch.cat(feats), torch.cat(labels)
    if len(feats) < len(ds):
        log.warning("skipped %d unreadable images of %d", len(ds) - len(feats), len(ds))
    return feats, labels


def labelled(ds: Dataset) -> bool:
    labels = getattr(ds, "labels", None)
    if labels is None:
        return True  # unknown until the features are extracted
    return bool(len(labels)) and min(labels.tolist() if torch.is_tensor(labels) else labels) >= 0


def knn_eval(backbone: nn.Module | None, train_ds: Dataset, test_ds: Dataset, view: ViewConfig,
             device: torch.device | str = "cpu", autocast: bool = False, ks: tuple[int, ...] = (20, 200),
             temperature: float = 0.07, workers: int = 0) -> dict[str, float]:  # fmt: skip
    """k-NN top-1 of ``backbone`` (or raw pixels when ``None``): features of ``train_ds`` vote for
    the images of ``test_ds``."""
    for ds in (train_ds, test_ds):
        if not labelled(ds):
            raise DataError("k-NN evaluation needs labels, and this data has none: give --data a labelled set "
                            "(fashion-mnist, emoji, or a folder with one sub-folder per class)")
    train, train_labels = extract_features(backbone, train_ds, view, device, autocast=autocast, workers=workers)
    test, test_labels = extract_features(backbone, test_ds, view, device, autocast=autocast, workers=workers)
    if (train_labels < 0).any() or (test_labels < 0).any():
        raise DataError("k-NN evaluation needs labels: use a folder with one sub-folder per class")
    return knn_accuracy(train, train_labels, test, test_labels, ks, temperature)


def evaluate_run(run: str | Path, data: str | None = None, baselines: bool = False, ks: tuple[int, ...] = (20, 200),
                 temperature: float = 0.07) -> dict:  # fmt: skip
    """k-NN top-1 of a run's backbone on ``data`` (default: the data it was trained on), written to the
    run's ``metrics.json`` under ``knn``; ``baselines`` adds the randomly initialised backbone and raw
    pixels."""
    from ..data.sources import open_dataset
    from ..hardware import default_device, resolve_precision
    from ..run import load_backbone, update_metrics

    backbone, cfg = load_backbone(run)
    name = data or cfg.data.name
    size, channels = cfg.data.image_size or cfg.views.size, cfg.data.channels or 3
    train, test = open_dataset(name, "train", size, channels), open_dataset(name, "test", size, channels)
    device = default_device()
    autocast = resolve_precision("auto", device.type).startswith("bf16")

    def score(model: nn.Module | None) -> dict[str, float]:
        model = model.to(device) if model is not None else None
        return knn_eval(model, train, test, cfg.views, device, autocast, ks, temperature, cfg.data.workers)

    results: dict = {"data": name, "train_images": len(train), "test_images": len(test), "trained": score(backbone)}
    if baselines:
        results["random_init"] = score(load_backbone(run, trained=False)[0])
        results["raw_pixels"] = score(None)
    update_metrics(Path(run), "knn", results)
    return results


def evaluate_pretrained(model: str, data: str = "fashion-mnist", ks: tuple[int, ...] = (20, 200),
                        temperature: float = 0.07, device: str | None = None) -> dict:  # fmt: skip
    """k-NN top-1 of a pretrained backbone (a :func:`freelabel.pretrained.load` name or folder) on
    ``data``, its images made with the model's own size, mean and std."""
    from ..data.sources import EMBEDDED, open_dataset
    from ..pretrained import load

    backbone = load(model, device=device)
    device_ = next(backbone.parameters()).device
    size = None if data in EMBEDDED else backbone.view.size  # embedded sets are resized batch by batch
    train, test = open_dataset(data, "train", size, 3), open_dataset(data, "test", size, 3)
    results = knn_eval(backbone, train, test, backbone.view, device_, False, ks, temperature)
    return {"data": data, "model": model, "train_images": len(train), "test_images": len(test), "pretrained": results}
