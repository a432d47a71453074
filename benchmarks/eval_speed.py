"""Evaluation in seconds: what scoring a run costs next to training it.

    python benchmarks/eval_speed.py [--run RUN] [--minutes 2] [--work /tmp/eval-speed] [--record results/eval_speed.jsonl]

1. Training share: the demo's SimCLR on Fashion-MNIST for ``--minutes`` with the online k-NN every fifth
   of it, its wall time next to its training time (skipped with ``--run``, which scores that run instead).
2. ``freelabel eval all RUN`` (k-NN with its random-init and raw-pixel baselines, then the linear probe),
   timed as the user runs it (a fresh process, start-up included): cold (no cached features anywhere) and
   warm (run again: the features are read back), and each protocol on its own, cold, for comparison.
3. One extraction pass of a ViT (MAE's Fashion-MNIST ViT-Tiny) over the 10,000 test images: images/s, and
   that rate's FLOP/s (FLOPs counted by ``torch.utils.flop_counter``) as a share of a measured matmul rate
   in the same precision.

Every figure is printed with the CPU it ran on (:func:`freelabel.hardware.cpu_description`) and, with
``--record``, appended as a row to a results file (:mod:`freelabel.results`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from freelabel.hardware import cpu_description, cpu_has_bf16


def command(*args: str, cache: Path) -> float:
    """Wall seconds of ``freelabel ARGS`` in a fresh process with its feature cache at ``cache``."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "freelabel.cli", *args],
        check=True,
        env={**os.environ, "FREELABEL_CACHE": str(cache)},
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def forget_features(run: Path, cache: Path | None) -> None:
    """No cached features of the run; none of the shared ones (baselines) either, unless ``cache`` is None."""
    import shutil

    shutil.rmtree(run / "features", ignore_errors=True)
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)
    metrics = run / "metrics.json"
    if metrics.is_file():
        m = json.loads(metrics.read_text())
        metrics.write_text(json.dumps({k: v for k, v in m.items() if k not in ("knn", "linear")}))


def train(work: Path, minutes: float) -> tuple[Path, dict]:
    run = work / "demo"
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "freelabel.cli",
            "pretrain",
            "simclr",
            "--data",
            "fashion-mnist",
            "--minutes",
            str(minutes),
        ]
        + ["--eval-every", str(minutes / 5), "--out", str(run)],
        check=True,
    )
    wall = time.perf_counter() - start
    p = json.loads((run / "metrics.json").read_text())["pretrain"]
    return run, {"budget_minutes": minutes, "train_minutes": p["train_minutes"], "wall_minutes": wall / 60}


def vit_extraction(work: Path) -> dict:
    """Images/s of one pass of a ViT-Tiny over Fashion-MNIST's test split, and its share of the matmul rate."""
    from freelabel.data.registry import open_dataset
    from freelabel.encoder import load_encoder
    from freelabel.evaluate.features import extract

    run = work / "vit"
    if not (run / "backbone.safetensors").is_file():
        subprocess.run(
            [sys.executable, "-m", "freelabel.cli", "pretrain", "mae", "--data", "fashion-mnist", "--steps", "1"]
            + ["--out", str(run)],
            check=True,
        )
    encoder = load_encoder(run)
    size = encoder.config.data.image_size or encoder.config.views.size
    test = open_dataset("fashion-mnist", "test", size, encoder.in_chans)
    bf16 = cpu_has_bf16()
    batch = test.images[:256]
    with FlopCounterMode(display=False) as counter, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        encoder.pooled(batch)
    flop_per_image = counter.get_total_flops() / len(batch)
    extract(encoder, test)  # warm-up
    start = time.perf_counter()
    extract(encoder, test)
    per_s = len(test) / (time.perf_counter() - start)
    dtype = torch.bfloat16 if bf16 else torch.float32
    a = torch.randn(2048, 2048, dtype=dtype)
    a @ a
    start = time.perf_counter()
    for _ in range(5):
        a @ a
    matmul = 5 * 2 * 2048**3 / (time.perf_counter() - start)
    return {
        "images_per_s": per_s,
        "gflop_per_image": flop_per_image / 1e9,
        "share_of_matmul_rate": per_s * flop_per_image / matmul,
        "matmul_gflop_per_s": matmul / 1e9,
        "precision": str(dtype).removeprefix("torch."),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="score this run instead of training the demo run")
    ap.add_argument("--minutes", type=float, default=2.0, help="the demo run's budget")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "eval-speed")
    ap.add_argument("--record", type=Path, help="append the figures to this results file")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    cache = args.work / "cache"
    print(cpu_description(), flush=True)
    rows = []
    if args.run is None:
        run, share = train(args.work, args.minutes)
        print(
            f"training: {share['train_minutes']:.2f} min of training in {share['wall_minutes']:.2f} min of wall time "
            f"({100 * share['train_minutes'] / share['wall_minutes']:.0f}% training; budget {share['budget_minutes']} min)"
        )
        measured = f"wall time of a {args.minutes:g}-minute run, online k-NN every fifth"
        rows.append({"measured": measured, "metric": "minutes", "value": share["wall_minutes"], "unit": "min"})
    else:
        run = args.run
    times = {}
    for name, argv in (("knn --baselines", ["knn", "--baselines"]), ("linear", ["linear"]), ("all", ["all"])):
        forget_features(run, cache)
        times[f"{name} (cold)"] = command("eval", *argv[:1], str(run), *argv[1:], cache=cache)
    forget_features(run, None)  # a second run of the same recipe and seed: its baselines are known
    times["all (baselines known)"] = command("eval", "all", str(run), cache=cache)
    times["all (warm)"] = command("eval", "all", str(run), cache=cache)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import freelabel.evaluate.knn"], check=True)
    times["start-up (import)"] = time.perf_counter() - start
    for name, seconds in times.items():
        print(f"eval {name:22s} {seconds:6.1f} s")
        rows.append({"measured": f"`freelabel eval {name}`", "metric": "seconds", "value": seconds, "unit": "s"})
    vit = vit_extraction(args.work)
    print(
        f"ViT-Tiny extraction: {vit['images_per_s']:.0f} images/s, {vit['gflop_per_image']:.3f} GFLOP/image, "
        f"{100 * vit['share_of_matmul_rate']:.0f}% of a {vit['precision']} 2048^2 matmul's "
        f"{vit['matmul_gflop_per_s']:.0f} GFLOP/s"
    )
    rows.append({"measured": "ViT-Tiny extraction, images/s", "metric": "rate", "value": vit["images_per_s"]})
    rows.append(
        {
            "measured": "ViT-Tiny extraction, share of the matmul rate",
            "metric": "share",
            "value": vit["share_of_matmul_rate"],
        }
    )
    if args.record:
        from freelabel.results import record

        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        record(args.record, [{"table": "eval_speed", "source": f"eval_speed.py {stamp}", **r} for r in rows])


if __name__ == "__main__":
    main()
