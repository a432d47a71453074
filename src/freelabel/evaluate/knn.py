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
from ..data.registry import NAMED, open_dataset
from ..data.views import ViewConfig, resize
from ..encoder import Encoder, load_encoder
from ..errors import DataError
from ..hardware import resolve_precision
from ..run import update_metrics

log = logging.getLogger("freelabel")


def knn_predict(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    ks: tuple[int, ...] = (20, 200),
    temperature: float = 0.07,
    chunk: int = 512,
) -> dict[int, torch.Tensor]:
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


def knn_accuracy(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    ks: tuple[int, ...] = (20, 200),
    temperature: float = 0.07,
) -> dict[str, float]:
    """Top-1 accuracy (%) for each ``k``, as ``{"top1_k20": ..., "top1_k200": ...}``."""
    preds = knn_predict(train, train_labels, test, ks, temperature)
    return {f"top1_k{k}": 100.0 * (p == test_labels).float().mean().item() for k, p in preds.items()}


@torch.no_grad()
def extract_features(
    encoder: Encoder | None,
    ds: Dataset,
    view: ViewConfig,
    batch_size: int = 512,
    autocast: bool = False,
    workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of every image by ``encoder`` (``None``: the pixels in [0, 1] at ``view.size``) and their labels."""
    feats, labels = [], []
    for batch in sequential(ds, batch_size, workers):
        if not len(batch.images):  # every image of the batch unreadable
            continue
        if encoder is None:
            f = resize(batch.images, view.size).flatten(1)
        else:
            with torch.autocast(encoder.device.type, dtype=torch.bfloat16, enabled=autocast):
                f = encoder.encode_image(batch.images)
        feats.append(f.float().cpu())
        labels.append(batch.labels)
    if not feats:
        raise DataError(
            f"none of the {len(ds)} images could be read"
            if len(ds)
            else "a split of the data holds no images (too few per class for a held-out fifth?); give more images"
        )
    feats, labels = torch.cat(feats), torch.cat(labels)
    if len(feats) < len(ds):
        log.warning("skipped %d unreadable images of %d", len(ds) - len(feats), len(ds))
    return feats, labels


def labelled(ds: Dataset) -> bool:
    """Whether every item of ``ds`` is labelled, as far as the dataset knows without decoding."""
    labels = getattr(ds, "labels", None)
    if labels is None:
        return True  # unknown until the features are extracted
    return bool(len(labels)) and min(labels.tolist() if torch.is_tensor(labels) else labels) >= 0


def knn_eval(
    model: nn.Module | Encoder | None,
    train_ds: Dataset,
    test_ds: Dataset,
    view: ViewConfig,
    device: torch.device | str = "cpu",
    autocast: bool = False,
    ks: tuple[int, ...] = (20, 200),
    temperature: float = 0.07,
    workers: int = 0,
) -> dict[str, float]:
    """k-NN top-1 of ``model`` (an :class:`Encoder`, a bare backbone taking ``view``, or raw pixels when
    ``None``): features of ``train_ds`` vote for the images of ``test_ds``. A backbone in training mode
    is put back in it afterwards."""
    for ds in (train_ds, test_ds):
        if not labelled(ds):
            raise DataError(
                "k-NN evaluation needs labels, and this data has none: give --data a labelled set "
                "(fashion-mnist, emoji, or a folder with one sub-folder per class)"
            )
    backbone = model.backbone if isinstance(model, Encoder) else model
    was_training = backbone is not None and backbone.training
    if isinstance(model, nn.Module):
        model = Encoder("backbone", model.to(device), view, getattr(train_ds, "channels", 3))
    if backbone is not None:
        backbone.eval()
    try:
        train, train_labels = extract_features(model, train_ds, view, autocast=autocast, workers=workers)
        test, test_labels = extract_features(model, test_ds, view, autocast=autocast, workers=workers)
    finally:
        if backbone is not None:
            backbone.train(was_training)
    if (train_labels < 0).any() or (test_labels < 0).any():
        raise DataError("k-NN evaluation needs labels: use a folder with one sub-folder per class")
    return knn_accuracy(train, train_labels, test, test_labels, ks, temperature)


def evaluate_knn(
    spec: str | Path,
    data: str | None = None,
    baselines: bool = False,
    ks: tuple[int, ...] = (20, 200),
    temperature: float = 0.07,
    weights: str | Path | None = None,
    device: str | None = None,
) -> dict:
    """k-NN top-1 of the encoder ``spec`` names (:func:`freelabel.encoder.load_encoder`) on ``data``
    (default: a run's own data, else fashion-mnist). A run's result is ``trained`` and is written to its
    ``metrics.json`` under ``knn``; a pretrained model's is ``pretrained``. ``baselines`` adds raw pixels
    and, for a run, its randomly initialised backbone."""
    encoder = load_encoder(spec, weights=weights, device=device)
    cfg = encoder.config
    name = data or (cfg.data.name if cfg else "fashion-mnist")
    if cfg:  # decoded as in training
        size, channels, workers = cfg.data.image_size or cfg.views.size, cfg.data.channels or 3, cfg.data.workers
    else:  # in-memory sets are resized batch by batch
        size, channels, workers = (None if name in NAMED else encoder.view.size), 3, 0
    train, test = open_dataset(name, "train", size, channels), open_dataset(name, "test", size, channels)
    autocast = cfg is not None and resolve_precision("auto", encoder.device.type).startswith("bf16")

    def score(model: Encoder | None) -> dict[str, float]:
        return knn_eval(model, train, test, encoder.view, encoder.device, autocast, ks, temperature, workers)

    results: dict = {"data": name, "train_images": len(train), "test_images": len(test)}
    results["trained" if cfg else "pretrained"] = score(encoder)
    if not cfg:
        results["model"] = str(spec)
    if baselines and cfg:
        results["random_init"] = score(load_encoder(spec, trained=False, device=encoder.device))
    if baselines:
        results["raw_pixels"] = score(None)
    if encoder.run_dir is not None:
        update_metrics(encoder.run_dir, "knn", results)
    return results
