"""SimCLR quality at a time budget: freelabel against lightly, same backbone, head, loss settings,
optimiser, batch and data, one after the other in this one run; k-NN top-1 on Fashion-MNIST.

lightly runs as its examples do: per-image PIL ``SimCLRTransform`` in DataLoader workers,
``SimCLRProjectionHead``, ``NTXentLoss``, AdamW at the recipe's learning rate with the same
warm-up and cosine schedule (driven by elapsed time, as freelabel's ``--minutes`` budget is).

    python benchmarks/simclr_knn_vs_lightly.py --minutes 5 [--workers 2]

Needs ``pip install lightly`` (benchmark only).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch.nn as nn
from simclr_throughput import lightly_setup, lightly_step  # noqa: E402  (same directory)

from freelabel.config import load_recipe, resolve
from freelabel.data.sources import fashion_mnist
from freelabel.encoder import Encoder
from freelabel.engine import pretrain
from freelabel.evaluate.knn import evaluate_knn, knn_eval
from freelabel.hardware import resolve_precision
from freelabel.schedules import lr_at


def train_lightly(cfg, minutes: float, workers: int, autocast: bool) -> nn.Module:
    data = fashion_mnist("train")
    _, model, loss_fn, optimizer, loader = lightly_setup(cfg, cfg.optim.batch_size, workers, data.images)
    peak = optimizer.param_groups[0]["lr"]
    seconds, steps = 0.0, 0
    while seconds < minutes * 60:
        it = iter(loader)
        while seconds < minutes * 60:
            t0 = time.perf_counter()  # waiting for the workers' augmentation counts, as freelabel's views do
            batch = next(it, None)
            if batch is None:
                break
            (x0, x1), _ = batch
            for group in optimizer.param_groups:
                group["lr"] = peak * lr_at(seconds / (minutes * 60), cfg.optim.warmup, cfg.optim.min_lr)
            lightly_step(model, loss_fn, optimizer, x0, x1, autocast)
            seconds += time.perf_counter() - t0
            steps += 1
    print(f"lightly: {steps} steps in {seconds / 60:.1f} min of steps")
    return model[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    autocast = resolve_precision("auto", "cpu").startswith("bf16")
    cfg = resolve(load_recipe("simclr-fashion-mnist"), {"budget.minutes": args.minutes})

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        pretrain(cfg, out)
        wall_f = time.perf_counter() - start
        ours = evaluate_knn(out)["trained"]
    start = time.perf_counter()
    backbone = train_lightly(cfg, args.minutes, args.workers, autocast)
    wall_l = time.perf_counter() - start
    theirs = knn_eval(Encoder("lightly", backbone, cfg.views, 1), fashion_mnist("train"), fashion_mnist("test"))
    print(f"{args.minutes:g} min budget, k-NN top-1 (k=20 / k=200):")
    print(f"  freelabel {ours['top1_k20']:.2f} / {ours['top1_k200']:.2f}   wall {wall_f / 60:.1f} min")
    print(f"  lightly   {theirs['top1_k20']:.2f} / {theirs['top1_k200']:.2f}   wall {wall_l / 60:.1f} min")


if __name__ == "__main__":
    main()
