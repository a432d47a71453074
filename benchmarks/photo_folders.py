"""Folders of real-size colour JPEGs made from the images this machine has, for the photo benchmarks,
and the peak memory of a command's whole process tree.

``emoji_jpegs(out)``: the emoji set (1,911 images, 10 categories) as JPEGs in one sub-folder per
category, each emoji at 60-100% of the short side of a white canvas of 96-400 px and aspect 1:2 to
2:1, at a random place on it (as subjects in photos are rarely in the centre square).
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import time
from pathlib import Path

from PIL import Image


def emoji_jpegs(out: str | Path, seed: int = 0) -> Path:
    from freelabel.data.emoji import emoji

    out = Path(out)
    if (out / ".complete").is_file():
        return out
    ds, rng = emoji("all"), random.Random(seed)
    for i in range(len(ds)):
        long, aspect = rng.randint(96, 400), math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
        w, h = (long, max(48, round(long / aspect))) if aspect >= 1 else (max(48, round(long * aspect)), long)
        side = round(min(w, h) * rng.uniform(0.6, 1.0))
        canvas = Image.new("RGB", (w, h), (255, 255, 255))
        canvas.paste(
            Image.fromarray(ds.images[i].permute(1, 2, 0).numpy()).resize((side, side), Image.BICUBIC),
            (rng.randint(0, w - side), rng.randint(0, h - side)),
        )
        folder = out / ds.classes[int(ds.labels[i])]
        folder.mkdir(parents=True, exist_ok=True)
        canvas.save(folder / f"{i:05d}.jpg", quality=90)
    (out / ".complete").touch()
    return out


def _tree_rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants, in KiB."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def run_measured(cmd: list[str], env: dict | None = None, every: float = 0.2) -> tuple[int, float, int]:
    """Run ``cmd``; its exit status, wall seconds, and the peak resident memory of its process tree (KiB)."""
    start, peak = time.perf_counter(), 0
    proc = subprocess.Popen(cmd, env=env)
    while proc.poll() is None:
        peak = max(peak, _tree_rss_kib(proc.pid))
        time.sleep(every)
    return proc.returncode, time.perf_counter() - start, peak
