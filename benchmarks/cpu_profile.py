"""Where a CPU SimCLR training step spends its time, and how close the model step comes to the machine's matmul rate.

    python benchmarks/cpu_profile.py [--batch 256] [--steps 10] [--top 15]

For fp32 and (where the CPU has AVX512-BF16 or AMX) bf16 autocast: the engine's SimCLR step on Fashion-MNIST
(the ``simclr-fashion-mnist`` recipe) under ``torch.profiler``, printed as the operators that take the most
time; the step split into views and model (forward, backward, optimiser); the model's FLOPs per step
(``FlopCounterMode``) per second of model step, as a share of the fastest measured square matmul in the same dtype.
The CPU's name, thread count and vector flags come first, since every figure depends on them.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from freelabel.config import load_recipe, resolve
from freelabel.data.loader import Batch
from freelabel.data.views import Views
from freelabel.engine import build_optimizer, step_generator
from freelabel.hardware import cpu_description, cpu_has_bf16
from freelabel.methods import build_method


def matmul_rate(dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 2048, 3072), repeat: int = 10) -> float:
    """The machine's matmul rate in ``dtype``: FLOP/s of the fastest square matmul over ``sizes`` (each the
    best of ``repeat`` after a warm-up), so that one size's poor blocking does not lower the ceiling."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, dtype=dtype)
        a @ a
        best = max(best, 2 * n**3 / min(_seconds(lambda a=a: a @ a) for _ in range(repeat)))
    return best


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def profile_step(batch: int, steps: int, bf16: bool, top: int) -> dict:
    """Profile ``steps`` SimCLR steps (after one warm-up); print the top operators; the step's figures."""
    cfg = resolve(
        load_recipe("simclr-fashion-mnist"),
        {"optim.batch_size": batch, "budget.steps": steps, "budget.minutes": None, "budget.epochs": None},
    )
    torch.manual_seed(0)
    method = build_method(cfg, 1).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(method, cfg, world=1)
    views = [Views(v) for v in method.views]
    images = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def make_views(step: int) -> Batch:
        g = step_generator(0, step)
        made = [v(images, g).contiguous(memory_format=torch.channels_last) for v in views]
        return Batch(images, views=made)

    def model_step(b: Batch) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = method(b)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model_step(make_views(0))
    with FlopCounterMode(display=False) as counter:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = method(make_views(0))["loss"]
        loss.backward()
    flops = counter.get_total_flops()
    t_views = t_model = 0.0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for step in range(steps):
            start = time.perf_counter()
            b = make_views(step)
            t_views += time.perf_counter() - start
            t_model += _seconds(lambda b=b: model_step(b))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))
    peak = matmul_rate(torch.bfloat16 if bf16 else torch.float32)
    achieved = flops * steps / t_model
    return {
        "precision": "bf16-mixed" if bf16 else "32-true",
        "images_per_s": batch * steps / (t_views + t_model),
        "views_share": t_views / (t_views + t_model),
        "model_gflop_per_s": achieved / 1e9,
        "matmul_gflop_per_s": peak / 1e9,
        "share_of_matmul": achieved / peak,
    }


def run(batch: int = 256, steps: int = 10, top: int = 15) -> list[dict]:
    print(cpu_description())
    rows = []
    for bf16 in (False, True) if cpu_has_bf16() else (False,):
        row = profile_step(batch, steps, bf16, top)
        rows.append(row)
        print(
            f"{row['precision']}: {row['images_per_s']:.0f} images/s, views {row['views_share']:.0%} of a step; "
            f"model step {row['model_gflop_per_s']:.1f} GFLOP/s = {row['share_of_matmul']:.0%} of a measured "
            f"matmul ({row['matmul_gflop_per_s']:.1f} GFLOP/s)"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10, help="profiled steps per precision")
    ap.add_argument("--top", type=int, default=15, help="operators to list")
    args = ap.parse_args()
    run(args.batch, args.steps, args.top)


if __name__ == "__main__":
    main()
