"""Curate an image set with a model's embeddings, before training on it or labelling it.

1. Near-duplicates (:func:`duplicate_groups`): in the source's order, an image is dropped when an
   earlier kept image is among its nearest neighbours by (centred) cosine similarity >= ``threshold``
   and their pictures agree: the Pearson correlation of their grey thumbnails (32 pixels, or the
   smaller image's size), at the best translation of up to a tenth of the side, is >=
   ``pixel_threshold`` (:func:`aligned_correlation`). Embeddings alone cannot tell a copy from a
   sibling: features learnt to ignore crops, colour and noise put a shifted, noisier copy of a garment
   no nearer to it than another garment of the same cut (``benchmarks/curate_duplicates.py``). So the
   embeddings propose the pairs and the pixels decide, as copy detection pairs a candidate search with
   a verification. The default, 0.99, survives re-encoding, resizing, brightness and contrast, noise
   and small shifts, and keeps Fashion-MNIST's look-alike garments apart. Cropped copies score
   0.85-0.99 and fine textures (grass, gravel, brick) 0.5-0.8: they need a lower ``pixel_threshold``,
   which suits data whose distinct images differ more than garments do (unrelated photos score < 0.5).
   ``pixel_threshold=None`` trusts the embeddings alone.
2. Balance (``clusters``): k-means over the remaining embeddings, then at most ``per_cluster`` images
   (default: the median cluster size) drawn at random from each cluster, so that dense modes (the
   thousandth photo of the same kind) no longer outweigh rare ones: the idea behind the curated
   LVD-142M of DINOv2 and the clustering-based curation of Vo et al. (2024).
3. Select (``select``): the N images that best cover the embedding space, for annotators: k-means with
   N centres, and for each centre the image nearest to it. Chosen over farthest-point sampling, which
   maximises the distance to the chosen set and so picks the outliers (odd crops, near-blank images)
   first; the images nearest to the k-means centres are typical of their region and spread over
   every region in proportion to the data, which is what a classifier learnt from few labels needs
   (the low-budget finding of TypiClust, Hacohen et al. 2022).

All three work on the embeddings centred on their mean (then L2-normalised again): features after a
ReLU and average pooling share a large positive mean, which puts the cosine similarity of any two
images near 1 (0.99 for a random CNN); centred, unrelated images score near 0 and copies near 1.

The result is a ``.txt`` file list that ``--data`` accepts, and a JSON report beside it.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.images import open_image
from ..data.registry import NAMED, open_dataset
from ..errors import DataError
from ..files import write_json, write_text
from . import ann
from .search import MANIFEST, SearchError, build_index, open_index

NEIGHBOURS = 32  # candidates per image for the duplicate links
THUMB, SHIFT = 32, 3  # side of the grey thumbnails that confirm a duplicate, and the translation allowed
MIN_THUMB = 8  # the smallest side two images are compared at (a tiny image is upsampled to it)
FLAT = 2.0  # grey levels of standard deviation below which a thumbnail is flat (blank): no pattern to correlate

Group = list[tuple[int, float, float | None]]


def duplicate_groups(
    embeddings: torch.Tensor,
    threshold: float,
    confirm: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    pixel_threshold: float = 0.99,
) -> list[Group]:
    """Near-duplicate groups, greedily in row order: a row is dropped when one of its ``NEIGHBOURS``
    nearest rows (exact search up to :data:`ann.THRESHOLD` rows, the HNSW graph above) comes before it,
    is kept, has cosine similarity >= ``threshold`` with it and, given ``confirm`` (rows, rows -> the
    pixel similarity of each pair), pixel similarity >= ``pixel_threshold``; it joins the group of the
    most similar such row. Unlike linking every similar pair (single linkage), this never chains a dense
    region of merely similar images into one group: each dropped row is itself close to the row that
    stays. Groups are ``[(kept row, 1.0, 1.0), (dropped row, cosine, pixel similarity or None), ...]``;
    rows without duplicates are left out."""
    n = len(embeddings)
    k = min(NEIGHBOURS + 1, n)
    if n > ann.THRESHOLD:
        scores, ids = ann.Ann(embeddings.shape[1]).add(embeddings).search(embeddings, k)
    else:
        found = [ann.exact_search(embeddings[s : s + 2048], embeddings, k) for s in range(0, n, 2048)]
        scores, ids = torch.cat([f[0] for f in found]), torch.cat([f[1] for f in found])
    scores, ids = scores.numpy(), ids.numpy()
    near = (scores >= threshold) & (ids >= 0) & (ids < np.arange(n)[:, None])
    rank = np.where(near, scores, -np.inf)  # which earlier row a dropped one joins
    pixels = np.full(scores.shape, np.nan)
    if confirm is not None:
        rows, cols = near.nonzero()
        pixels[rows, cols] = confirm(rows, ids[rows, cols])
        near &= pixels >= pixel_threshold
        rank = np.where(near, pixels, -np.inf)
    kept = np.ones(n, dtype=bool)
    groups: dict[int, Group] = {}
    for i in near.any(1).nonzero()[0]:
        ok = near[i] & kept[ids[i]]
        if ok.any():
            best = int(np.argmax(np.where(ok, rank[i], -np.inf)))
            kept[i] = False
            pixel = None if confirm is None else round(float(pixels[i, best]), 4)
            groups.setdefault(int(ids[i, best]), []).append((int(i), round(float(scores[i, best]), 4), pixel))
    return [[(j, 1.0, 1.0), *members] for j, members in sorted(groups.items())]


def aligned_correlation(a: torch.Tensor, b: torch.Tensor, shift: int = SHIFT) -> torch.Tensor:
    """Per pair of grey thumbnails ``a[p]``, ``b[p]`` (``[P, H, W]``), the highest Pearson correlation of
    their overlap over translations of up to ``shift`` pixels: 1 for the same picture, however its
    brightness, contrast or position changed by a little; noise lowers it a little. Two flat
    (blank) thumbnails score 1 minus their difference in mean brightness (as a share of 255); a flat
    one against a patterned one scores 0."""
    h, w = a.shape[-2:]
    best = torch.full((len(a),), -1.0)
    for dy in range(-shift, shift + 1):
        for dx in range(-shift, shift + 1):
            x = a[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)].flatten(1)
            y = b[:, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)].flatten(1)
            x, y = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
            best = torch.maximum(best, (F.normalize(x, dim=1) * F.normalize(y, dim=1)).sum(1))
    flat_a, flat_b = a.flatten(1).std(1) < FLAT, b.flatten(1).std(1) < FLAT
    both = 1 - (a.flatten(1).mean(1) - b.flatten(1).mean(1)).abs() / 255
    return torch.where(flat_a & flat_b, both, torch.where(flat_a | flat_b, 0.0, best))


def _named(entry: str) -> tuple[str, str, int] | None:
    """``(name, split, index)`` of a named-set item (``fashion-mnist/train/000123``), else None."""
    parts = entry.split("/")
    if len(parts) == 3 and parts[0] in NAMED and parts[2].isdigit() and not Path(entry).exists():
        return parts[0], parts[1], int(parts[2])
    return None


def _shorter_side(entry: str) -> int:
    """The shorter side of an image file from its header (no decoding), or of a named set's images."""
    if (item := _named(entry)) is not None:
        return _named_side(*item[:2])
    try:
        with Image.open(entry) as img:
            return min(img.size)
    except (OSError, ValueError, Image.DecompressionBombError):
        return THUMB  # unreadable: its thumbnail will be NaN anyway


@functools.cache
def _named_side(name: str, split: str) -> int:
    return min(open_dataset(name, split).images.shape[-2:])


def thumbnails(entries: list[str], side: int = THUMB) -> torch.Tensor:
    """Grey ``side``-pixel square thumbnails ``[N, side, side]`` (0-255, float) of image files or named-set
    items; an image that no longer decodes is all NaN (never a duplicate)."""
    out = torch.full((len(entries), side, side), float("nan"))
    items: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for row, entry in enumerate(entries):
        if (item := _named(entry)) is not None:
            items.setdefault(item[:2], []).append((row, item[2]))
            continue
        try:
            img = open_image(entry, channels=1, min_side=side)
        except DataError:
            continue
        small = img.resize((side, side), Image.BILINEAR, reducing_gap=3.0)
        out[row] = torch.from_numpy(np.asarray(small, dtype=np.float32).copy())
    for (name, split), pairs in items.items():
        rows, idx = zip(*pairs)
        grey = open_dataset(name, split).images[list(idx)].float().mean(1, keepdim=True)
        out[list(rows)] = F.interpolate(grey, size=(side, side), mode="bilinear", antialias=True)[:, 0]
    return out


def pixel_similarity(entries: list[str]) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``confirm`` for :func:`duplicate_groups`: the :func:`aligned_correlation` of the thumbnails of rows
    ``i[p]`` and ``j[p]`` of ``entries``, each image decoded once per thumbnail size, the pairs in chunks.
    A pair is compared at ``THUMB`` pixels, or at the shorter side of its smaller image (at least
    ``MIN_THUMB``): a small image is never upsampled, which would turn a shift of whole pixels into one
    of fractions that no shift undoes."""

    def confirm(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        used = np.unique(np.concatenate([i, j]))
        short = np.array([_shorter_side(entries[r]) for r in used])
        side = np.clip(np.minimum(short[np.searchsorted(used, i)], short[np.searchsorted(used, j)]), MIN_THUMB, THUMB)
        sims = np.empty(len(i))
        for s in np.unique(side).tolist():
            pairs = (side == s).nonzero()[0]
            rows = np.unique(np.concatenate([i[pairs], j[pairs]]))
            thumbs = thumbnails([entries[r] for r in rows], s)
            a, b = (torch.from_numpy(np.searchsorted(rows, x[pairs])) for x in (i, j))
            shift = max(1, round(SHIFT * s / THUMB))
            for c in range(0, len(pairs), 4096):
                sims[pairs[c : c + 4096]] = aligned_correlation(thumbs[a[c : c + 4096]], thumbs[b[c : c + 4096]], shift)
        return np.nan_to_num(sims, nan=-1.0)

    return confirm


def kmeans(embeddings: torch.Tensor, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical k-means (faiss) from a k-means++ start: ``(centres [k, D], assignment [N])``. The start
    matters: random starts put several centres in a large mode and none in the small ones."""
    import faiss

    x = np.ascontiguousarray(embeddings.float().numpy())
    km = faiss.Kmeans(
        x.shape[1], k, niter=25, seed=seed, spherical=True, min_points_per_centroid=1, max_points_per_centroid=1_000_000
    )
    km.train(x, init_centroids=embeddings[kmeans_plus_plus(embeddings, k, seed)].numpy())
    _, assign = km.index.search(x, 1)
    return torch.from_numpy(km.centroids), torch.from_numpy(assign[:, 0]).long()


def kmeans_plus_plus(x: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """``k`` distinct rows of unit vectors ``x``, each drawn with probability proportional to its squared
    distance to the nearest row drawn before (Arthur and Vassilvitskii, 2007)."""
    g = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(len(x), (1,), generator=g))]
    dist = (2 - 2 * x @ x[chosen[0]]).clamp(min=0)
    for _ in range(k - 1):
        i = int(torch.multinomial(dist, 1, generator=g)) if dist.sum() > 0 else int(dist.argmax())
        chosen.append(i)
        dist = torch.minimum(dist, (2 - 2 * x @ x[i]).clamp(min=0))
        dist[chosen] = 0
    return torch.tensor(chosen)


def balance(
    embeddings: torch.Tensor, clusters: int, per_cluster: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, list[dict]]:
    """Rows kept (sorted) after capping every k-means cluster at ``per_cluster`` random members (default:
    the median cluster size), and per cluster ``{"cluster", "size", "kept", "dropped": [rows]}``."""
    _, assign = kmeans(embeddings, clusters, seed)
    sizes = torch.bincount(assign, minlength=clusters)
    cap = per_cluster if per_cluster is not None else int(sizes[sizes > 0].median())
    g = torch.Generator().manual_seed(seed)
    kept, report = [], []
    for c in range(clusters):
        members = (assign == c).nonzero()[:, 0]
        members = members[torch.randperm(len(members), generator=g)]
        kept.append(members[:cap])
        report.append(
            {
                "cluster": c,
                "size": len(members),
                "kept": min(cap, len(members)),
                "dropped": sorted(members[cap:].tolist()),
            }
        )
    return torch.cat(kept).sort().values, report


def select(embeddings: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """The ``n`` rows nearest to the centres of a k-means with ``n`` centres (each row chosen once), sorted."""
    centres, _ = kmeans(embeddings, n, seed)
    sims = centres @ embeddings.T
    chosen: list[int] = []
    taken = torch.zeros(len(embeddings), dtype=torch.bool)
    for c in sims.max(1).values.argsort(descending=True).tolist():  # the tightest centres choose first
        i = int(sims[c].masked_fill(taken, -float("inf")).argmax())
        chosen.append(i)
        taken[i] = True
    return torch.tensor(sorted(chosen))


def curate(
    source: str | Path,
    model: str | Path | None,
    out: str | Path,
    *,
    split: str = "train",
    threshold: float = 0.7,
    pixel_threshold: float | None = 0.99,
    clusters: int = 0,
    per_cluster: int | None = None,
    n_select: int | None = None,
    seed: int = 0,
    examples: int = 5,
    batch_size: int = 64,
    device: str | None = None,
    weights: str | Path | None = None,
) -> dict:
    """Embed ``source`` (a folder, or an embedded set's ``split``) with ``model`` (and its ``weights``), or
    take the embeddings of ``source`` when it is an index (``freelabel index build``; no ``model``), drop
    near-duplicates, optionally balance clusters and select ``n_select`` images; write the kept images to
    ``out`` (a file list for ``--data``) and the report (returned) to ``out`` with the suffix ``.json``.
    ``threshold`` is the cosine similarity from which two images are candidate duplicates, and
    ``pixel_threshold`` the thumbnail correlation that confirms them (None: the cosine decides alone)."""
    out = Path(out)
    if out.suffix != ".txt":
        raise SearchError(f"--out {out}: a file list ends in .txt, which is what --data reads")
    if not 0 < threshold <= 1:
        raise SearchError(f"the duplicate threshold is a cosine similarity in (0, 1], not {threshold}")
    if pixel_threshold is not None and not 0 < pixel_threshold <= 1:
        raise SearchError(f"the pixel threshold is a correlation in (0, 1], not {pixel_threshold}")
    if (Path(source) / MANIFEST).is_file():
        idx, unreadable = open_index(source), []
    elif model is None:
        raise SearchError(f"give --model to embed {source} with (or an index folder as SOURCE)")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            unreadable = build_index(source, model, Path(tmp) / "index", split, batch_size, device, weights=weights)[
                "failed"
            ]
            idx = open_index(Path(tmp) / "index")
    base = Path(idx.meta["source"])
    entries = [str(base / r["path"]) if base.is_dir() else r["path"] for r in idx.rows]
    labelled = base.is_dir() and any(r["label"] for r in idx.rows)
    lines = [f"{e}\t{r['label']}" if labelled and r["label"] else e for e, r in zip(entries, idx.rows)]
    n = len(entries)
    for what, count in (("clusters", clusters), ("--select", n_select or 0)):
        if count < 0 or count > n:
            raise SearchError(f"{what} {count} is not between 0 and the {n} images of {source}")
    emb = F.normalize(idx.embeddings - idx.embeddings.mean(0), dim=1)  # centred: see the module's docstring
    confirm = pixel_similarity(entries) if pixel_threshold is not None else None
    groups = duplicate_groups(emb, threshold, confirm, pixel_threshold or 0.0)
    dropped = {g[0] for grp in groups for g in grp[1:]}
    keep = torch.tensor([i for i in range(n) if i not in dropped], dtype=torch.long)
    report = {
        "source": str(source),
        "model": idx.meta["model"],
        "images": n,
        "unreadable": unreadable,
        "duplicates": {
            "threshold": threshold,
            "pixel_threshold": pixel_threshold,
            "groups": len(groups),
            "dropped": len(dropped),
            "examples": [
                {
                    "kept": entries[g[0][0]],
                    "dropped": [{"image": entries[i], "similarity": s, "pixels": px} for i, s, px in g[1:]],
                }
                for g in sorted(groups, key=len, reverse=True)[:examples]
            ],
        },
    }
    if clusters:
        rows, per = balance(emb[keep], clusters, per_cluster, seed)
        report["balance"] = {
            "clusters": clusters,
            "per_cluster": max(c["kept"] for c in per),
            "dropped": len(keep) - len(rows),
            "examples": [
                {**c, "dropped": [entries[keep[i]] for i in c["dropped"][:examples]]}
                for c in sorted(per, key=lambda c: -len(c["dropped"]))[:examples]
            ],
        }
        keep = keep[rows]
    if n_select:
        if n_select > len(keep):
            raise SearchError(f"--select {n_select}: only {len(keep)} images are left after curation")
        keep = keep[select(emb[keep], n_select, seed)]
        report["select"] = {
            "n": n_select,
            "how": "the image nearest to each of the centres of a k-means with N centres",
        }
    report |= {"kept": len(keep), "list": str(out)}
    write_text(out, "".join(lines[i] + "\n" for i in keep.tolist()))
    write_json(out.with_suffix(".json"), report)
    return report
