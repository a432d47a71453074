"""Dense linear probe: how much of a pixel's class the frozen spatial features hold.

A linear layer on the frozen patch tokens (ViTs) or the last feature map (CNNs), standardised, gives
class logits on the token grid; they are upsampled (bilinear) to the pixels and trained with
cross-entropy against the masks; the score is the mean intersection-over-union over classes (mIoU) on
the test images. Data: :func:`freelabel.data.composed.open_masked` (composed Fashion-MNIST scenes or a
folder of images with PNG masks).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.composed import IGNORE, MaskedImages, open_masked
from ..encoder import Encoder
from . import scalars
from .common import autocast_enabled, load_model, progress, record


@torch.no_grad()
def token_grid(model: Encoder, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Spatial features ``[N, D, h, w]`` of square images (the tokens laid back on their grid)."""
    device = next(model.backbone.parameters()).device
    model.backbone.eval()
    out = []
    n = (len(images) + batch_size - 1) // batch_size
    for s in progress(range(0, len(images), batch_size), n, f"tokens of {len(images)} images"):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_enabled(device)):
            t = model.encode_tokens(images[s : s + batch_size]).cpu()
        side = math.isqrt(t.shape[1])
        out.append(t.transpose(1, 2).reshape(len(t), -1, side, side))
    return torch.cat(out)


def confusion(pred: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    keep = target != IGNORE
    return torch.bincount(target[keep] * classes + pred[keep], minlength=classes**2).view(classes, classes)


def miou(conf: torch.Tensor) -> dict:
    """mIoU (%) over the classes present in the targets or predictions, per-class IoU and pixel accuracy."""
    tp = conf.diag().float()
    union = conf.sum(0) + conf.sum(1) - conf.diag()
    iou = tp / union.clamp(min=1)
    present = union > 0
    return {
        "miou": 100 * float(iou[present].mean()),
        "pixel_accuracy": 100 * float(tp.sum() / conf.sum().clamp(min=1)),
        "iou": [round(100 * float(v), 2) if p else None for v, p in zip(iou, present)],
    }


def fit_dense(
    train_f: torch.Tensor,
    train_m: torch.Tensor,
    test_f: torch.Tensor,
    test_m: torch.Tensor,
    classes: int,
    epochs: int = 20,
    lr: float = 1e-2,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict:
    """Train a 1x1 convolution on ``[N, D, h, w]`` features against ``[N, S, S]`` masks (on ``device``, the
    features staying where they are); mIoU on the test set."""
    mean = train_f.mean((0, 2, 3), keepdim=True).to(device)
    std = train_f.std((0, 2, 3), keepdim=True).clamp(min=1e-6).to(device)
    head = nn.Conv2d(train_f.shape[1], classes, 1).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * max(1, len(train_f) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    size = train_m.shape[-2:]

    def logits(f: torch.Tensor) -> torch.Tensor:
        return F.interpolate(head((f.to(device) - mean) / std), size=size, mode="bilinear", align_corners=False)

    def order():
        for _ in range(epochs):
            perm = torch.randperm(len(train_f), generator=g)
            yield from (perm[s * batch_size : (s + 1) * batch_size] for s in range(max(1, len(train_f) // batch_size)))

    for idx in progress(order(), steps, "dense linear head"):
        loss = F.cross_entropy(logits(train_f[idx]), train_m[idx].to(device), ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    conf = torch.zeros(classes, classes, dtype=torch.long)
    with torch.no_grad():
        for s in range(0, len(test_f), batch_size):
            pred = logits(test_f[s : s + batch_size]).argmax(1).cpu()
            conf += confusion(pred.flatten(), test_m[s : s + batch_size].flatten(), classes)
    return miou(conf)


def dense_model(model: Encoder, size: int) -> Encoder:
    """The model fed images at (at least) the data's own size: a run trained on 28-px garments sees a 56-px
    canvas at 56 px, so the garments keep the scale it learnt them at."""
    return model.at(replace(model.view, size=max(model.view.size, size)))


def masked_data(model: Encoder, data: str) -> tuple[MaskedImages, MaskedImages]:
    channels = model.in_chans if model.run_dir is not None else 3
    size = 56 if data == "composed" else max(model.view.size, 56)
    return open_masked(data, "train", size, channels), open_masked(data, "test", size, channels)


def evaluate_dense(spec: str | Path, data: str = "composed", baselines: bool = False, epochs: int = 20) -> dict:
    """Dense linear-probe mIoU of a run's backbone or a pretrained model on masked ``data``, written to
    ``metrics.json`` under ``dense``; ``baselines`` adds the random-init backbone."""
    model = load_model(spec)
    train, test = masked_data(model, data)
    classes = len(train.classes)

    def score(m: Encoder) -> dict:
        m = dense_model(m, train.images.shape[-1])
        f_train, f_test = token_grid(m, train.images), token_grid(m, test.images)
        r = fit_dense(
            f_train, train.masks, f_test, test.masks, classes, epochs, device=next(m.backbone.parameters()).device
        )
        return {**r, "grid": list(f_train.shape[-2:])}

    results: dict = {
        "data": data,
        "classes": train.classes,
        "train_images": len(train),
        "test_images": len(test),
        "trained": score(model),
    }
    if baselines:
        results["random_init"] = score(load_model(spec, trained=False))
    record(model, "dense", results)
    return results


def summary(r: dict) -> list[str]:
    return [scalars("dense", r)] + [f"  {k:12s} mIoU {r[k]['miou']:.2f}%" for k in ("trained", "random_init") if k in r]
