"""Curate an image set with a model's embeddings, before training on it or labelling it.

1. Near-duplicates: in the source's order, an image is dropped when an earlier kept image has (centred)
   cosine similarity >= ``threshold`` with it (:func:`duplicate_groups`).
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

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import ann
from .search import MANIFEST, SearchError, build_index, open_index

NEIGHBOURS = 16  # candidates per image for the duplicate links


def duplicate_groups(embeddings: torch.Tensor, threshold: float) -> list[list[tuple[int, float]]]:
    """Near-duplicate groups, greedily in row order: a row is dropped when one of its ``NEIGHBOURS``
    nearest rows (exact search up to :data:`ann.THRESHOLD` rows, the HNSW graph above) comes before it,
    is kept, and has cosine similarity >= ``threshold`` with it; it joins the group of the most similar
    such row. Unlike linking every similar pair (single linkage), this never chains a dense region of
    merely similar images into one group: each dropped row is itself close to the row that stays.
    Groups are ``[(kept row, 1.0), (dropped row, similarity), ...]``; rows without duplicates are left out."""
    n = len(embeddings)
    k = min(NEIGHBOURS + 1, n)
    if n > ann.THRESHOLD:
        scores, ids = ann.Ann(embeddings.shape[1]).add(embeddings).search(embeddings, k)
    else:
        found = [ann.exact_search(embeddings[s : s + 2048], embeddings, k) for s in range(0, n, 2048)]
        scores, ids = torch.cat([f[0] for f in found]), torch.cat([f[1] for f in found])
    scores, ids = scores.numpy(), ids.numpy()
    kept = np.ones(n, dtype=bool)
    groups: dict[int, list[tuple[int, float]]] = {}
    for i in range(n):
        near = (scores[i] >= threshold) & (ids[i] >= 0) & (ids[i] < i)
        near[near] &= kept[ids[i][near]]
        if near.any():
            best = int(np.argmax(np.where(near, scores[i], -np.inf)))
            kept[i] = False
            groups.setdefault(int(ids[i][best]), []).append((i, round(float(scores[i][best]), 4)))
    return [[(j, 1.0), *members] for j, members in sorted(groups.items())]


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
    threshold: float = 0.95,
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
    ``out`` (a file list for ``--data``) and the report (returned) to ``out`` with the suffix ``.json``."""
    out = Path(out)
    if out.suffix != ".txt":
        raise SearchError(f"--out {out}: a file list ends in .txt, which is what --data reads")
    if not 0 < threshold <= 1:
        raise SearchError(f"the duplicate threshold is a cosine similarity in (0, 1], not {threshold}")
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
    groups = duplicate_groups(emb, threshold)
    dropped = {i for g in groups for i, _ in g[1:]}
    keep = torch.tensor([i for i in range(n) if i not in dropped], dtype=torch.long)
    report = {
        "source": str(source),
        "model": idx.meta["model"],
        "images": n,
        "unreadable": unreadable,
        "duplicates": {
            "threshold": threshold,
            "groups": len(groups),
            "dropped": len(dropped),
            "examples": [
                {"kept": entries[g[0][0]], "dropped": [{"image": entries[i], "similarity": s} for i, s in g[1:]]}
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
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(lines[i] + "\n" for i in keep.tolist()), encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    return report
