"""Streaming image shards: peak memory flat in the number of shards, and every sample read exactly
once per epoch by two processes.

1. The emoji set as a folder of real-size JPEGs (``photo_folders.emoji_jpegs``), repeated 2x and 8x
   (each copy its own samples), written as shards with ``freelabel shards make``; then a short SimCLR
   run (``--steps``, a small CNN at 32 px, 2 loader workers) over each, with the peak resident memory
   of the whole process tree (the run and its loader workers) sampled every 0.2 s.
2. Two processes (torch.distributed, gloo) stream one epoch of the 2x shards with loader workers,
   as a two-process run reads them, and gather the samples they saw: each must appear once.
3. A two-process CPU pretraining run for one epoch over shards of the emoji JPEGs once.

    python benchmarks/shards_memory.py [--work /tmp/shards-memory] [--copies 2 8]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp
from photo_folders import emoji_jpegs, run_measured

from freelabel.data.shards import ImageShards

CLI = [sys.executable, "-m", "freelabel.cli"]
TRAIN = [
    "pretrain",
    "simclr",
    "--batch-size",
    "64",
    "--set",
    "views.size=32",
    "--set",
    "data.workers=2",
    "--set",
    "backbone.args.widths=[16,32]",
    "--set",
    "method_args.hidden_dim=64",
]  # a small CNN: the data path dominates


def make(work: Path, copies: int) -> Path:
    """Shards of ``copies`` copies of the emoji JPEGs, each sample captioned by its own name."""
    shards = work / f"shards-{copies}x"
    if (shards / "shards.json").is_file():
        return shards
    folder = emoji_jpegs(work / "emoji-jpegs")
    listing = work / f"copies-{copies}.csv"
    with open(listing, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for c in range(copies):
            for p in sorted(folder.rglob("*.jpg")):
                w.writerow([str(p), f"{c}/{p.parent.name}/{p.stem}"])
    assert os.system(" ".join([*CLI, "shards", "make", str(listing), str(shards), "--per-shard", "500"])) == 0
    return shards


def _read_epoch(rank: int, world: int, spec: str, workers: int, port: int) -> None:
    from freelabel.data.loader import batches
    from freelabel.data.shards import ImageShards

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    ds = ImageShards(spec, "train", 32)
    seen = [t for b in batches(ds, 64, seed=0, epoch=0, rank=rank, world=world, workers=workers) for t in b.texts]
    every: list = [None] * world
    dist.all_gather_object(every, seen)
    if rank == 0:
        flat = [t for part in every for t in part]
        Path(spec, "epoch-check.json").write_text(
            json.dumps(
                {
                    "samples_in_split": len(ds),
                    "per_process": [len(p) for p in every],
                    "read": len(flat),
                    "distinct": len(set(flat)),
                    "dropped_tail": len(ds) - len(flat),
                }
            )
        )
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/shards-memory")
    p.add_argument("--copies", type=int, nargs="+", default=[2, 8])
    p.add_argument("--steps", type=int, default=40, help="steps of each memory run (batch 64)")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    results = {}
    for copies in args.copies:
        shards = make(work, copies)
        index = json.loads((shards / "shards.json").read_text())
        rc, seconds, peak = run_measured(
            [*CLI, *TRAIN, "--steps", str(args.steps), "--data", str(shards), "--out", str(work / f"run-{copies}x")],
            env,
        )
        metrics = json.loads((work / f"run-{copies}x" / "metrics.json").read_text())["pretrain"] if rc == 0 else {}
        results[f"{copies}x"] = {
            "shards": len(index["shards"]),
            "samples": sum(s["samples"] for s in index["shards"]),
            "exit": rc,
            "wall_s": round(seconds, 1),
            "peak_rss_mib": round(peak / 1024),
            "images_seen": metrics.get("images_seen"),
        }
        print(f"{copies}x: {results[f'{copies}x']}", flush=True)
    two = make(work, args.copies[0])
    mp.spawn(_read_epoch, args=(2, str(two), 2, 29_517), nprocs=2)
    results["two_process_epoch"] = json.loads((two / "epoch-check.json").read_text())
    print(f"two processes, one epoch: {results['two_process_epoch']}", flush=True)
    run, one = work / "run-2proc", make(work, 1)
    rc, seconds, peak = run_measured(
        [
            *CLI,
            *TRAIN,
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--data",
            str(one),
            "--devices",
            "2",
            "--accelerator",
            "cpu",
            "--out",
            str(run),
        ],
        env,
    )
    m = json.loads((run / "metrics.json").read_text())["pretrain"] if rc == 0 else {}
    results["two_process_run"] = {
        "exit": rc,
        "wall_s": round(seconds, 1),
        "samples_in_split": len(ImageShards(str(one), "train", 32)),
        "steps": m.get("steps"),
        "batch_per_process": 32,
        "images_seen": m.get("images_seen"),
        "peak_rss_mib": round(peak / 1024),
    }
    print(f"two-process pretraining, one epoch: {results['two_process_run']}")
    (work / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
