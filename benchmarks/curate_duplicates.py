"""Does `freelabel curate` find near-duplicates, and only them? Fashion-MNIST's 10,000 test images are
written as PNG files with 500 injected copies, each a light change of one of them (a shift of 1 or 2
pixels, Gaussian noise of std 8 grey levels, brightness x0.85 to x1.15), named so that every original
comes before every copy (``00123.png``, then ``copy-00123.png``). `freelabel curate` keeps the first image of each group; we count the injected
copies it dropped (found) and the originals it dropped (wrongly, unless Fashion-MNIST itself holds the
same picture twice: those are counted apart). Then the same count at other thresholds, from the same
embeddings.

    freelabel pretrain simclr --data fashion-mnist --minutes 2 --out /tmp/e-simclr
    OMP_WAIT_POLICY=PASSIVE python benchmarks/curate_duplicates.py --model /tmp/e-simclr
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from freelabel.data.sources import fashion_mnist
from freelabel.pipelines.curate import NEIGHBOURS, curate, duplicate_groups, pixel_similarity
from freelabel.pipelines.search import build_index, open_index


def augment(image: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A light change of a ``uint8 [1, H, W]`` image: shift, noise, brightness."""
    dy, dx = (
        int(v) * int(s)
        for v, s in zip(torch.randint(1, 3, (2,), generator=g), torch.randint(0, 2, (2,), generator=g) * 2 - 1)
    )
    x = torch.roll(image.float(), (dy, dx), (1, 2))
    x[:, : max(dy, 0)], x[:, x.shape[1] + min(dy, 0) :] = 0, 0  # what rolled over the edge is background
    x[:, :, : max(dx, 0)], x[:, :, x.shape[2] + min(dx, 0) :] = 0, 0
    x = x * (0.85 + 0.3 * torch.rand(1, generator=g)) + 8 * torch.randn(x.shape, generator=g)
    return x.round().clamp(0, 255).to(torch.uint8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a run directory or pretrained model")
    p.add_argument("--weights", help="weights of a torchvision:NAME model")
    p.add_argument("--copies", type=int, default=500)
    p.add_argument("--work", default="/tmp/curate-duplicates", help="folder for the images and the index")
    p.add_argument("--threshold", type=float, default=0.7, help="cosine of candidate pairs (curate's default)")
    p.add_argument("--pixel-threshold", type=float, default=0.99, help="thumbnail correlation (curate's default)")
    args = p.parse_args()
    ds = fashion_mnist("test")
    g = torch.Generator().manual_seed(0)
    sources = torch.randperm(len(ds), generator=g)[: args.copies].tolist()
    tmp = Path(args.work)
    folder = tmp / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(ds.images):
        Image.fromarray(image[0].numpy()).save(folder / f"{i:05d}.png")
    for i in sources:
        Image.fromarray(augment(ds.images[i], g)[0].numpy()).save(folder / f"copy-{i:05d}.png")
    build_index(folder, args.model, tmp / "index", weights=args.weights)
    out = tmp / "kept.txt"
    r = curate(tmp / "index", None, out, threshold=args.threshold, pixel_threshold=args.pixel_threshold)
    kept = {Path(line).name for line in out.read_text().splitlines()}
    idx = open_index(tmp / "index")
    names = [Path(row["path"]).name for row in idx.rows]
    row = {n: i for i, n in enumerate(names)}
    emb = F.normalize(idx.embeddings - idx.embeddings.mean(0), dim=1)  # as curate sees them
    originals = torch.tensor([row[f"{i:05d}.png"] for i in range(len(ds))])
    copy_sim = torch.stack([emb[row[f"copy-{i:05d}.png"]] @ emb[row[f"{i:05d}.png"]] for i in sources])
    sims = emb[originals] @ emb[originals].T
    sims.fill_diagonal_(-1)
    nearest = sims.max(1).values
    seen: dict[bytes, int] = {}
    for image in ds.images:
        seen[image.numpy().tobytes()] = seen.get(image.numpy().tobytes(), 0) + 1
    twin = [seen[image.numpy().tobytes()] > 1 for image in ds.images]
    q = torch.tensor([0.01, 0.05, 0.5, 0.95, 0.99])
    print(f"{len(ds)} Fashion-MNIST test images + {args.copies} lightly changed copies, embedded by {args.model}")
    print(
        "centred cosine, quantiles 1/5/50/95/99%: copy to its original "
        + " ".join(f"{v:.3f}" for v in copy_sim.quantile(q))
        + "; original to its nearest other original "
        + " ".join(f"{v:.3f}" for v in nearest.quantile(q))
    )
    print(f"{sum(twin)} test images have a pixel-identical twin in the test set")
    original_of = np.full(len(names), -1)  # a copy's row -> its original's row
    original_of[[row[f"copy-{i:05d}.png"] for i in sources]] = [row[f"{i:05d}.png"] for i in sources]
    candidates = duplicate_groups(emb, args.threshold, lambda i, j: (j == original_of[i]).astype(float), 0.5)
    print(
        f"{sum(len(grp) - 1 for grp in candidates)} copies have their original among their {NEIGHBOURS} "
        f"nearest with cosine >= {args.threshold} (the most a cosine threshold of {args.threshold} lets through)"
    )
    print(
        f"freelabel curate --threshold {args.threshold} --pixel-threshold {args.pixel_threshold}: "
        f"{r['duplicates']['dropped']} dropped in "
        f"{r['duplicates']['groups']} groups, {r['kept']} kept"
    )
    print(f"{'cosine':>7} {'pixels':>7} {'copies found':>13} {'originals dropped':>18} {'of them twins':>14}")
    confirm = pixel_similarity([str(Path(idx.meta["source"]) / row["path"]) for row in idx.rows])
    settings = [(t, None) for t in (0.95, 0.98, 0.99)] + [(args.threshold, p) for p in (0.97, 0.98, 0.99, 0.995)]
    for t, px in sorted({*settings, (args.threshold, args.pixel_threshold)}, key=lambda s: (s[1] or 0, s[0])):
        groups = duplicate_groups(emb, t, confirm if px else None, px or 0.0)
        dropped = {names[i] for grp in groups for i, *_ in grp[1:]}
        if (t, px) == (args.threshold, args.pixel_threshold):
            assert dropped == {n for n in names if n not in kept}, "curate and duplicate_groups disagree"
        found = sum(f"copy-{i:05d}.png" in dropped for i in sources)
        wrong = [int(n[:5]) for n in dropped if "copy" not in n]
        print(
            f"{t:>7.3f} {px or '-':>7} {found:>7}/{args.copies:<5} {len(wrong):>9}/{len(ds):<8} "
            f"{sum(twin[i] for i in wrong):>14}",
            flush=True,
        )


if __name__ == "__main__":
    main()
