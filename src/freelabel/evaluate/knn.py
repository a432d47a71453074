"""Weighted k-nearest-neighbour classification on frozen features (as in DINO, Caron et al. 2021).

Features are L2-normalised; a test image's ``k`` nearest training images (cosine similarity) vote
for their class with weight ``exp(similarity / T)``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..data.registry import NAMED, open_dataset
from ..encoder import Encoder, load_encoder
from ..errors import DataError
from ..run import update_metrics
from .features import Features, extract, features, key, remembered

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


def labelled(ds: Dataset) -> bool:
    """Whether every item of ``ds`` is labelled, as far as the dataset knows without decoding."""
    labels = getattr(ds, "labels", None)
    if labels is None:
        return True  # unknown until the features are extracted
    return bool(len(labels)) and min(labels.tolist() if torch.is_tensor(labels) else labels) >= 0


def _check_labelled(*sets: Dataset) -> None:
    if not all(labelled(ds) for ds in sets):
        raise DataError(
            "k-NN evaluation needs labels, and this data has none: give --data a labelled set "
            "(fashion-mnist, emoji, or a folder with one sub-folder per class)"
        )


def knn_scores(
    train: Features, test: Features, ks: tuple[int, ...] = (20, 200), temperature: float = 0.07
) -> dict[str, float]:
    """k-NN top-1 of ``test`` against ``train`` (features of labelled images)."""
    if (train.labels < 0).any() or (test.labels < 0).any():
        raise DataError("k-NN evaluation needs labels: use a folder with one sub-folder per class")
    return knn_accuracy(train.x, train.labels, test.x, test.labels, ks, temperature)


def knn_eval(
    encoder: Encoder | None,
    train_ds: Dataset,
    test_ds: Dataset,
    size: int | None = None,
    ks: tuple[int, ...] = (20, 200),
    temperature: float = 0.07,
    workers: int = 0,
) -> dict[str, float]:
    """k-NN top-1 of ``encoder`` (``None``: raw pixels at ``size``), extracted now and not kept: for a
    backbone in the middle of training (the online k-NN), which is put back in training mode afterwards."""
    _check_labelled(train_ds, test_ds)
    train = extract(encoder, train_ds, size=size, workers=workers, describe="k-NN: features of the training images")
    test = extract(encoder, test_ds, size=size, workers=workers, describe="k-NN: features of the test images")
    return knn_scores(train, test, ks, temperature)


def evaluation_data(encoder: Encoder, data: str | None) -> tuple[str, int | None, int, int]:
    """The data an encoder is scored on (default: a run's own data, else fashion-mnist), the size and
    channels its images are decoded at (as in training; in-memory sets stay whole for pretrained models
    and are resized batch by batch), and the loader's workers."""
    cfg = encoder.config
    name = data or (cfg.data.name if cfg else "fashion-mnist")
    if cfg:
        return name, cfg.data.image_size or cfg.views.size, cfg.data.channels or 3, cfg.data.workers
    return name, None if name in NAMED else encoder.view.size, 3, 0


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
    and, for a run, its randomly initialised backbone. Features come from (and go to) the cache of
    :mod:`.features`, which the linear probe and the report share."""
    encoder = load_encoder(spec, weights=weights, device=device)
    cfg = encoder.config
    name, size, channels, workers = evaluation_data(encoder, data)
    train, test = open_dataset(name, "train", size, channels), open_dataset(name, "test", size, channels)
    _check_labelled(train, test)

    pixels = encoder.view.size

    def score(model: Encoder | None) -> dict[str, float]:
        made = [
            features(model, name, split, ds, size=pixels, workers=workers)
            for split, ds in (("train", train), ("test", test))
        ]
        return knn_scores(*made, ks, temperature)

    def baseline(model: Encoder | None) -> dict[str, float]:  # the same for every run of this data, backbone, seed
        what = {"protocol": "knn", "features": key(model, pixels), "data": name, "train": len(train), "test": len(test)}
        return remembered(what | {"ks": list(ks), "temperature": temperature}, lambda: score(model))

    results: dict = {"data": name, "train_images": len(train), "test_images": len(test)}
    results["trained" if cfg else "pretrained"] = score(encoder)
    if not cfg:
        results["model"] = str(spec)
    if baselines and cfg:
        results["random_init"] = baseline(load_encoder(spec, trained=False, device=encoder.device))
    if baselines:
        results["raw_pixels"] = baseline(None)
    if encoder.run_dir is not None:
        update_metrics(encoder.run_dir, "knn", results)
    return results


def summary(results: dict) -> list[str]:
    """k-NN top-1 of the model and of each baseline, one line each, for every k."""
    ks = [key.removeprefix("top1_k") for key in next(v for v in results.values() if isinstance(v, dict))]
    lines = [
        f"k-NN top-1 on {results['data']} (test {results['test_images']}, features of train {results['train_images']})"
    ]
    for name in ("trained", "random_init", "raw_pixels", "pretrained"):
        if name in results:
            lines.append(f"  {name:12s} " + "  ".join(f"k={k}: {results[name][f'top1_k{k}']:.2f}%" for k in ks))
    return lines
