"""SimCLR training throughput: freelabel against lightly, same backbone, batch, resolution and data.

Both run in this one process, alternating in rounds so that machine noise hits both alike; the
result is printed as ratios. Two measurements:

- augmentation alone: images/s of making two SimCLR views (freelabel's batched tensor views
  against lightly's per-image ``SimCLRTransform`` on PIL images);
- end to end: images/s of whole training steps, data and augmentation included. lightly runs the
  way its examples do (a DataLoader with ``SimCLRTransform`` in worker processes, ``NTXentLoss``,
  a projection head from ``lightly.models.modules``); freelabel runs its engine's step.

    python benchmarks/simclr_throughput.py [--rounds 3] [--steps 15] [--batch 256] [--workers 2]

Needs ``pip install lightly`` (benchmark only).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn

from freelabel.backbones import build_backbone
from freelabel.config import load_recipe, resolve
from freelabel.data.loader import Batch, batches
from freelabel.data.sources import fashion_mnist
from freelabel.data.views import Views
from freelabel.engine import build_optimizer, step_generator
from freelabel.hardware import cpu_description, resolve_precision
from freelabel.methods import build_method


def freelabel_setup(batch: int):
    cfg = resolve(load_recipe("simclr-fashion-mnist"), {"budget.minutes": 1, "optim.batch_size": batch})
    torch.manual_seed(0)
    method = build_method(cfg, in_chans=1).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(method, cfg, world=1)
    return cfg, method, optimizer


def freelabel_steps(cfg, method, optimizer, data, steps: int, autocast: bool) -> float:
    views = [Views(v) for v in method.views]
    it = batches(data, cfg.optim.batch_size, seed=0, epoch=int(time.time()))
    start = time.perf_counter()
    for step in range(steps):
        b = next(it)
        g = step_generator(0, step)
        made = [v(b.images, g).contiguous(memory_format=torch.channels_last) for v in views]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = method(Batch(b.images, b.labels, views=made))["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * cfg.optim.batch_size / (time.perf_counter() - start)


def lightly_setup(cfg, batch: int, workers: int, images: torch.Tensor):
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform
    from PIL import Image

    v = cfg.views
    transform = SimCLRTransform(
        input_size=v.size,
        cj_prob=v.jitter,
        cj_strength=1.0,
        cj_bright=v.brightness,
        cj_contrast=v.contrast,
        cj_sat=0.0,
        cj_hue=0.0,
        min_scale=v.scale[0],
        random_gray_scale=0.0,
        gaussian_blur=0.0,
        hf_prob=v.hflip,
        rr_prob=0.0,
        normalize={"mean": list(v.mean), "std": list(v.std)},
    )

    class PilSet(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return transform(Image.fromarray(images[i, 0].numpy())), 0

    torch.manual_seed(0)
    backbone = build_backbone(cfg.backbone.name, 1, v.size, **cfg.backbone.args)
    head = SimCLRProjectionHead(backbone.embed_dim, cfg.method_args["hidden_dim"], cfg.method_args["proj_dim"])
    model = nn.Sequential(backbone, head).to(memory_format=torch.channels_last)
    loss_fn = NTXentLoss(temperature=cfg.method_args["temperature"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    loader = torch.utils.data.DataLoader(PilSet(), batch_size=batch, shuffle=True, drop_last=True, num_workers=workers)
    return transform, model, loss_fn, optimizer, loader


def lightly_step(model, loss_fn, optimizer, x0: torch.Tensor, x1: torch.Tensor, autocast: bool) -> None:
    """One training step the way lightly's SimCLR example takes it."""
    x0, x1 = x0.contiguous(memory_format=torch.channels_last), x1.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = loss_fn(model(x0), model(x1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def lightly_steps(model, loss_fn, optimizer, loader, steps: int, autocast: bool) -> float:
    """Images/s of ``steps`` steps once the loader's workers are up (their start is not timed); the workers
    end with the round, so that they do not prefetch while freelabel is timed."""
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    for _ in range(steps):
        (x0, x1), _ = next(it)
        lightly_step(model, loss_fn, optimizer, x0, x1, autocast)
    seconds = time.perf_counter() - start
    del it
    return steps * loader.batch_size / seconds


def views_rate(cfg, images: torch.Tensor, n: int) -> float:
    views = Views(cfg.views)
    start = time.perf_counter()
    for s in range(0, n, 256):
        g = step_generator(0, s)
        views(images[s : s + 256], g), views(images[s : s + 256], g)
    return n / (time.perf_counter() - start)


def lightly_views_rate(transform, images: torch.Tensor, n: int) -> float:
    from PIL import Image

    start = time.perf_counter()
    for i in range(n):
        transform(Image.fromarray(images[i, 0].numpy()))
    return n / (time.perf_counter() - start)


def run(rounds: int = 3, steps: int = 15, batch: int = 256, workers: int = 2, precision: str = "auto") -> dict:
    """Median images/s of both libraries' augmentation and whole training steps over ``rounds``, printed."""
    data = fashion_mnist("train")
    autocast = resolve_precision(precision, "cpu").startswith("bf16")
    cfg, method, optimizer = freelabel_setup(batch)
    transform, model, loss_fn, l_opt, loader = lightly_setup(cfg, batch, workers, data.images)
    print(cpu_description())
    print(
        f"SimCLR, {cfg.backbone.name} backbone, batch {batch}, {cfg.views.size}px, bf16 autocast: {autocast}, "
        f"lightly DataLoader workers: {workers}"
    )

    freelabel_steps(cfg, method, optimizer, data, 2, autocast)  # warm-up both
    lightly_steps(model, loss_fn, l_opt, loader, 2, autocast)
    aug_f, aug_l, e2e_f, e2e_l, e2e_l32 = [], [], [], [], []
    for r in range(rounds):
        aug_f.append(views_rate(cfg, data.images, 4096))
        aug_l.append(lightly_views_rate(transform, data.images, 1024))
        e2e_f.append(freelabel_steps(cfg, method, optimizer, data, steps, autocast))
        e2e_l.append(lightly_steps(model, loss_fn, l_opt, loader, steps, autocast))
        e2e_l32.append(lightly_steps(model, loss_fn, l_opt, loader, steps, False) if autocast else e2e_l[-1])
        print(
            f"round {r + 1}: augmentation {aug_f[-1]:,.0f} vs {aug_l[-1]:,.0f} img/s; training {e2e_f[-1]:,.0f} "
            f"vs {e2e_l[-1]:,.0f} img/s (lightly in fp32 as in its examples: {e2e_l32[-1]:,.0f})"
        )
    med = {
        k: statistics.median(v)
        for k, v in dict(aug_f=aug_f, aug_l=aug_l, e2e_f=e2e_f, e2e_l=e2e_l, e2e_l32=e2e_l32).items()
    }
    print(
        f"augmentation (2 views per image): freelabel {med['aug_f']:,.0f} img/s, lightly {med['aug_l']:,.0f} img/s, "
        f"ratio {med['aug_f'] / med['aug_l']:.1f}x"
    )
    print(
        f"end-to-end training:              freelabel {med['e2e_f']:,.0f} img/s, lightly {med['e2e_l']:,.0f} img/s, "
        f"ratio {med['e2e_f'] / med['e2e_l']:.2f}x"
    )
    print(
        f"  against lightly in fp32 (its examples' default): {med['e2e_l32']:,.0f} img/s, "
        f"ratio {med['e2e_f'] / med['e2e_l32']:.2f}x"
    )
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=15, help="timed steps per round and library")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2, help="lightly's DataLoader workers")
    ap.add_argument("--precision", default="auto", help="auto (bf16 where the CPU has it) or 32-true, for both")
    args = ap.parse_args()
    run(args.rounds, args.steps, args.batch, args.workers, args.precision)


if __name__ == "__main__":
    main()
