"""Decode + random-resized-crop throughput on real-size JPEGs, per core: freelabel against torchvision
and lightly, on the same files in the same process.

The folder (made on first use with ``--make``) holds JPEGs cut from the colour photos of
``skimage.data`` and the emoji set, at long sides from 300 to 2000 px and aspect ratios from 1:2 to
2:1. Each pipeline makes SimCLR's two 224-px views of every image, with crops from the whole image:

- ``freelabel crops``: decode at the size the views need (JPEG draft), two boxes over the whole
  image, each resized once (antialiased) -- what the loader workers do;
- ``torchvision crops``: ``Image.open().convert("RGB")``, then ``RandomResizedCrop(224)``, flip and
  ``PILToTensor`` per view -- the per-image pipeline of torchvision's references;
- ``freelabel full``: the crops, then the rest of SimCLR's augmentation batched (64 images) on the CPU;
- ``torchvision full``: the crops plus ColorJitter, RandomGrayscale, GaussianBlur and Normalize per image;
- ``lightly full``: lightly's ``SimCLRTransform(input_size=224)`` per image.

One thread, one process: the rates are per core, from the process's CPU time (and wall time beside
it). The pipelines take turns over chunks of files so that noise from other work hits all alike.

    python benchmarks/crop_throughput.py --make /tmp/photos2000 --count 2000
    python benchmarks/crop_throughput.py /tmp/photos2000 [--limit 600]

lightly is the ``bench`` extra (``pip install lightly``).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from freelabel.data.crops import RandomCrops
from freelabel.data.views import ViewConfig, Views

SIMCLR = dict(
    size=224,
    scale=(0.08, 1.0),
    brightness=0.8,
    contrast=0.8,
    saturation=0.8,
    hue=0.2,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
)


def _sources() -> list[np.ndarray]:
    from skimage import data

    from freelabel.data.emoji import emoji

    photos = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "colorwheel"):
        try:
            img = getattr(data, name)()
        except Exception:  # needs a download this machine cannot make
            continue
        if img.ndim == 3 and img.shape[2] >= 3:
            photos.append(np.ascontiguousarray(img[:, :, :3]))
    ds = emoji("all")
    photos += [ds.images[i].permute(1, 2, 0).numpy() for i in range(0, len(ds), 7)]
    return photos


def _write(job: tuple[int, str, int]) -> None:
    i, out, seed = job
    rng = random.Random(seed * 100_003 + i)
    src = _SOURCES[rng.randrange(len(_SOURCES))]
    h, w = src.shape[:2]
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))  # width / height of the file
    ch = min(h, round(w / aspect))  # the largest region of the source with that aspect, somewhere in it
    cw = min(w, round(ch * aspect))
    top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
    long = rng.randint(300, 2000)
    size = (long, max(1, round(long / aspect))) if aspect >= 1 else (max(1, round(long * aspect)), long)
    img = Image.fromarray(src[top : top + ch, left : left + cw]).resize(size, Image.BICUBIC)
    img.save(Path(out) / f"{i:05d}.jpg", quality=rng.randint(80, 95))


def _init(sources: list[np.ndarray]) -> None:
    global _SOURCES
    _SOURCES = sources


def make_folder(out: Path, count: int, workers: int = 2) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(workers, initializer=_init, initargs=(_sources(),)) as pool:
        list(pool.map(_write, [(i, str(out), 0) for i in range(count)], chunksize=16))


def pipelines(batch: int = 64) -> dict:
    import torchvision.transforms as T

    view = ViewConfig(**SIMCLR)
    crops = RandomCrops([view, view])
    views = Views(view)
    geometry = T.Compose([T.RandomResizedCrop(224, antialias=True), T.RandomHorizontalFlip(), T.PILToTensor()])
    full = T.Compose(
        [
            T.RandomResizedCrop(224, antialias=True),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
            T.RandomGrayscale(0.2),
            T.RandomApply([T.GaussianBlur(23, (0.1, 2.0))], p=0.5),
            T.ToTensor(),
            T.Normalize(SIMCLR["mean"], SIMCLR["std"]),
        ]
    )
    g = torch.Generator().manual_seed(0)

    def ours(paths):
        return [crops.read(p, g) for p in paths]

    def ours_full(paths):
        made = ours(paths)
        for s in range(0, len(made), batch):
            for v in range(2):
                views(torch.stack([m[v] for m in made[s : s + batch]]), g, cropped=True)

    def torchvision_geometry(paths):
        for p in paths:
            img = Image.open(p).convert("RGB")
            geometry(img), geometry(img)

    def torchvision_full(paths):
        for p in paths:
            img = Image.open(p).convert("RGB")
            full(img), full(img)

    runs = {
        "freelabel crops": ours,
        "torchvision crops": torchvision_geometry,
        "freelabel full": ours_full,
        "torchvision full": torchvision_full,
    }
    try:
        from lightly.transforms import SimCLRTransform

        lightly = SimCLRTransform(input_size=224)

        def lightly_full(paths):
            for p in paths:
                lightly(Image.open(p).convert("RGB"))

        runs["lightly full"] = lightly_full
    except ImportError:
        print("lightly is not installed (pip install lightly): its column is left out")
    return runs


def measure(folder: Path, limit: int | None, chunk: int) -> dict:
    torch.set_num_threads(1)
    paths = sorted(folder.glob("*.jpg"))[:limit]
    runs = pipelines()
    cpu = dict.fromkeys(runs, 0.0)
    wall = dict.fromkeys(runs, 0.0)
    for s in range(0, len(paths), chunk):  # the pipelines take turns over the same chunk of files
        part = paths[s : s + chunk]
        for name, fn in runs.items():
            c, w = time.process_time(), time.perf_counter()
            fn(part)
            cpu[name] += time.process_time() - c
            wall[name] += time.perf_counter() - w
    sizes = [Image.open(p).size for p in paths]
    return {
        "files": len(paths),
        "median_pixels": float(np.median([w * h for w, h in sizes])),
        "images_per_cpu_s": {k: len(paths) / v for k, v in cpu.items()},
        "images_per_wall_s": {k: len(paths) / v for k, v in wall.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", nargs="?", help="folder of JPEGs to read")
    p.add_argument("--make", metavar="DIR", help="write the benchmark folder of JPEGs to DIR")
    p.add_argument("--count", type=int, default=2000, help="JPEGs to write with --make")
    p.add_argument("--limit", type=int, help="read only the first LIMIT files")
    p.add_argument("--chunk", type=int, default=50, help="files per turn of each pipeline")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    if args.make:
        make_folder(Path(args.make), args.count)
        print(f"wrote {args.count} JPEGs to {args.make}")
    if not args.folder:
        return
    r = measure(Path(args.folder), args.limit, args.chunk)
    rate = r["images_per_cpu_s"]
    print(f"{r['files']} JPEGs (median {r['median_pixels'] / 1e6:.2f} Mpx), two 224-px views each, one thread")
    print(f"{'pipeline':20s} {'images/s/core (CPU)':>20s} {'images/s (wall)':>16s}")
    for k, v in rate.items():
        print(f"{k:20s} {v:20.1f} {r['images_per_wall_s'][k]:16.1f}")
    r["ratios"] = {
        "crops: freelabel / torchvision": rate["freelabel crops"] / rate["torchvision crops"],
        "full: freelabel / torchvision": rate["freelabel full"] / rate["torchvision full"],
    }
    if "lightly full" in rate:
        r["ratios"]["full: freelabel / lightly"] = rate["freelabel full"] / rate["lightly full"]
    for k, v in r["ratios"].items():
        print(f"{k:34s} {v:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
