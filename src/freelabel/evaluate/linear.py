"""Linear probe on frozen features, as DINOv2's linear evaluation (Oquab et al. 2023) does it.

The features of the training and test sets are extracted once and cached (:mod:`.features`: shared with
k-NN and the report). One linear head per
(learning rate, weight decay) of a grid trains at once (every head's logits come from one batched
matmul) on standardised features, with SGD, momentum and a cosine schedule, on the training set less
a seeded validation split carved from it; the head with the best validation accuracy is scored on the
test set.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..encoder import Encoder
from . import scalars
from .common import class_names, labels_of, load_model, open_split, progress, record
from .features import features, key, remembered

LRS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
WEIGHT_DECAYS = (0.0, 1e-5, 1e-4, 1e-3)


class LinearHeads(nn.Module):
    """``H`` linear classifiers of the same features; ``forward`` gives their logits ``[H, N, classes]``."""

    def __init__(self, heads: int, dim: int, classes: int):
        super().__init__()
        self.weight = nn.ParameterList([nn.Parameter(torch.zeros(dim, classes)) for _ in range(heads)])
        self.bias = nn.ParameterList([nn.Parameter(torch.zeros(classes)) for _ in range(heads)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nd,hdc->hnc", x, torch.stack(list(self.weight))) + torch.stack(list(self.bias))[:, None]

    def head(self, i: int) -> nn.Linear:
        lin = nn.Linear(*self.weight[i].shape)
        lin.weight.data, lin.bias.data = self.weight[i].detach().T.clone(), self.bias[i].detach().clone()
        return lin


def train_heads(
    x: torch.Tensor,
    y: torch.Tensor,
    grid: list[tuple[float, float]],
    epochs: int = 25,
    batch_size: int = 1024,
    seed: int = 0,
) -> LinearHeads:
    """One head per ``(lr, weight_decay)`` of ``grid``, trained on features ``x`` and labels ``y``."""
    heads = LinearHeads(len(grid), x.shape[1], int(y.max()) + 1).to(x.device)
    groups = [
        {"params": [w, b], "lr": lr, "weight_decay": wd} for (lr, wd), w, b in zip(grid, heads.weight, heads.bias)
    ]
    opt = torch.optim.SGD(groups, momentum=0.9)
    steps = epochs * max(1, len(x) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)

    def batches():
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=g).to(x.device)
            for s in range(max(1, len(x) // batch_size)):
                yield order[s * batch_size : (s + 1) * batch_size]

    for idx in progress(batches(), steps, f"{len(grid)} linear heads"):
        logits = heads(x[idx])  # [H, b, C]
        loss = F.cross_entropy(logits.flatten(0, 1), y[idx].repeat(len(grid))) * len(grid)  # sum of the heads' means
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return heads


@torch.no_grad()
def head_accuracy(heads: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Top-1 (%) of every head."""
    return 100.0 * (heads(x).argmax(-1) == y).float().mean(-1)


def fit_linear(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    lrs: tuple[float, ...] = LRS,
    weight_decays: tuple[float, ...] = WEIGHT_DECAYS,
    epochs: int = 25,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> tuple[dict, nn.Linear]:
    """Train the grid's heads on the training set less a seeded validation split, pick the best on the
    validation split, score it on the test set. Returns the results and that head, standardisation
    folded in, as a linear layer on the raw features."""
    start, cpu = time.perf_counter(), time.process_time()
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(len(train_x) * val_fraction))
    val, fit = order[:n_val], order[n_val:]
    grid = [(lr, wd) for lr in lrs for wd in weight_decays]
    heads = train_heads(train_x[fit], train_y[fit], grid, epochs, seed=seed)
    val_acc = head_accuracy(heads, train_x[val], train_y[val])
    best = int(val_acc.argmax())
    head = heads.head(best)
    head.bias.data -= (mean / std) @ head.weight.data.T
    head.weight.data /= std
    results = {
        "top1": float(head_accuracy(heads, test_x, test_y)[best]),
        "lr": grid[best][0],
        "weight_decay": grid[best][1],
        "val_top1": float(val_acc[best]),
        "val_images": n_val,
        "grid_val_top1": {f"lr={lr:g},wd={wd:g}": round(float(a), 2) for (lr, wd), a in zip(grid, val_acc)},
        "seconds": round(time.perf_counter() - start, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
    }
    return results, head


def evaluate_linear(
    spec: str | Path,
    data: str | None = None,
    baselines: bool = False,
    out: str | Path | None = None,
    epochs: int = 25,
    seed: int = 0,
) -> dict:
    """Linear-probe top-1 of a run's backbone or a pretrained model on ``data`` (default: the run's data),
    written to ``metrics.json`` under ``linear``; ``baselines`` adds the random-init backbone and raw
    pixels. The trained probe is kept as a classifier folder at ``out`` (default: ``RUN/classifier-linear``)."""
    from .classifier import Classifier, save_classifier

    model = load_model(spec)
    data = data or model.default_data
    train, test = open_split(model, data, "train"), open_split(model, data, "test")
    for ds in (train, test):
        labels_of(ds)  # fails early, before any feature is extracted, when the data has no labels
    device = model.device  # the heads train where the model runs

    def score(m: Encoder | None) -> tuple[dict, nn.Linear]:
        tr, te = (
            features(m, data, split, ds, size=model.view.size) for split, ds in (("train", train), ("test", test))
        )
        return fit_linear(*(t.to(device) for t in (tr.x, tr.labels, te.x, te.labels)), epochs=epochs, seed=seed)

    def baseline(m: Encoder | None) -> dict:  # the same for every run of this data, backbone and seed
        what = {"protocol": "linear", "features": key(m, model.view.size), "data": data, "train": len(train)}
        return remembered(what | {"test": len(test), "epochs": epochs, "seed": seed}, lambda: score(m)[0])

    trained, head = score(model)
    results: dict = {"data": data, "train_images": len(train), "test_images": len(test), "trained": trained}
    out = out or (model.run_dir / "classifier-linear" if model.run_dir else None)
    if out is not None:
        classes = class_names(train, head.out_features)
        clf = Classifier(model, head.to(device), classes)
        results["classifier"] = str(
            save_classifier(clf, out, {"protocol": "linear", "data": data, "test_top1": trained["top1"]})
        )
    if baselines:
        results["random_init"] = baseline(load_model(spec, trained=False))
        results["raw_pixels"] = baseline(None)
    record(model, "linear", results)
    return results


def summary(results: dict) -> list[str]:
    lines = [scalars("linear", results)]
    return lines + [
        f"  {k:12s} {results[k]['top1']:.2f}%" for k in ("trained", "random_init", "raw_pixels") if k in results
    ]
