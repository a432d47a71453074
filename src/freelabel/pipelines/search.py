"""An embedding index: every image of a folder (or of an embedded data set's split) as one
L2-normalised vector, searched by cosine similarity with an image or, for image-text models, a text.

On disk an index is a folder with ``embeddings.safetensors`` (``[N, D]`` float32) and ``index.json``
(the model, its input view, the source, and per row the path, size, mtime and class). Both are
written atomically and share a build id, so a half-finished update is detected, never read. A new
``build`` over the same folder embeds only new or changed files (by size and mtime) and drops the
rows of deleted ones.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..data.loader import sequential
from ..data.registry import NAMED, open_dataset
from ..data.sources import ImageFiles, load_image, scan_folder
from ..encoder import load_encoder
from ..errors import SearchError
from .ann import search_rows, update_graph

EMBEDDINGS, MANIFEST = "embeddings.safetensors", "index.json"


@dataclass
class Index:
    meta: dict
    embeddings: torch.Tensor  # [N, D], L2-normalised

    @property
    def rows(self) -> list[dict]:
        return self.meta["rows"]


def open_index(path: str | Path) -> Index:
    path = Path(path)
    if not (path / MANIFEST).is_file() or not (path / EMBEDDINGS).is_file():
        raise SearchError(
            f"{path} is not an index (no {MANIFEST} and {EMBEDDINGS}); make one with `freelabel index build`"
        )
    meta = json.loads((path / MANIFEST).read_text())
    from safetensors import safe_open

    with safe_open(str(path / EMBEDDINGS), "pt") as f:
        build = (f.metadata() or {}).get("build")
    if build != meta.get("build"):
        raise SearchError(f"{path}: {EMBEDDINGS} and {MANIFEST} are from different builds (an interrupted update); "
                          "run the same `freelabel index build` again")  # fmt: skip
    return Index(meta, load_file(str(path / EMBEDDINGS))["embeddings"])


def _atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    write(tmp)
    os.replace(tmp, path)


def _save(path: Path, meta: dict, embeddings: torch.Tensor) -> None:
    path.mkdir(parents=True, exist_ok=True)
    meta["build"] = uuid.uuid4().hex
    _atomic(
        path / EMBEDDINGS, lambda t: save_file({"embeddings": embeddings.contiguous()}, t, {"build": meta["build"]})
    )
    _atomic(path / MANIFEST, lambda t: Path(t).write_text(json.dumps(meta, indent=1)))


def build_index(source: str | Path, model: str | Path, out: str | Path, split: str = "test", batch_size: int = 64,
                device: str | None = None, workers: int = 0, weights: str | Path | None = None) -> dict:  # fmt: skip
    """Create or update the index at ``out`` over ``source`` (a folder, or an embedded data set name
    whose ``split`` is indexed) with ``model`` (and its ``weights``, see :func:`freelabel.encoder.load_encoder`). Returns counts
    (``embedded``: new or changed files, ``kept``, ``removed``: deleted files, ``failed``: unreadable
    files, ``rows``) and speed (``seconds`` in all, model loading included; ``images_per_s`` of
    decoding and embedding)."""
    out = Path(out)
    embedded = str(source) in NAMED
    model_id = str(model) if not Path(model).expanduser().exists() else str(Path(model).expanduser().resolve())
    source_id = f"{source}:{split}" if embedded else str(Path(source).expanduser().resolve())
    old = open_index(out) if (out / MANIFEST).exists() else None
    if old is not None and (old.meta["model"], old.meta["source"]) != (model_id, source_id):
        raise SearchError(f"{out} indexes {old.meta['source']} with {old.meta['model']}; give another --out for "
                          f"{source_id} with {model_id}")  # fmt: skip
    start = time.perf_counter()
    if embedded:
        ds = open_dataset(str(source), split)
        names = list(getattr(ds, "classes", []))
        current = [{"path": f"{source}/{split}/{i:06d}", "label": names[int(y)] if names else None}
                   for i, y in enumerate(ds.labels.tolist())]  # fmt: skip
    else:
        paths, labels, names, _ = scan_folder(Path(source).expanduser())
        root = Path(source).expanduser().resolve()
        current = []
        for p, y in zip(paths, labels):
            st = p.stat()
            current.append({"path": str(p.resolve().relative_to(root)), "size": st.st_size, "mtime": st.st_mtime_ns,
                            "label": names[y] if y >= 0 else None})  # fmt: skip
    previous = {r["path"]: (i, r) for i, r in enumerate(old.rows)} if old else {}
    keep = sorted((c for c in current if c["path"] in previous and previous[c["path"]][1] == c),
                  key=lambda c: previous[c["path"]][0])  # in the old order: new rows only extend the ANN graph
    todo = [i for i, c in enumerate(current) if not (c["path"] in previous and previous[c["path"]][1] == c)]
    weights = str(Path(weights).expanduser().resolve()) if weights is not None else None
    encoder = load_encoder(model, weights=weights, device=device) if todo or old is None else None
    new_rows, new_vecs, failed = [], [], []
    embed_start = time.perf_counter()
    if todo:
        if embedded:
            batches = ((ds.images[todo[s : s + batch_size]], todo[s : s + batch_size], [])
                       for s in range(0, len(todo), batch_size))  # fmt: skip
        else:
            files = ImageFiles([root / current[i]["path"] for i in todo], todo, [], encoder.view.size, encoder.in_chans)
            batches = ((b.images, b.labels.tolist(), b.skipped) for b in sequential(files, batch_size, workers))
        for images, idx, skipped in batches:
            failed += skipped
            if len(idx):
                new_vecs.append(encoder.encode_image(images).cpu())
                new_rows += [current[i] for i in idx]
    embed_seconds = time.perf_counter() - embed_start
    vecs = ([old.embeddings[[previous[r["path"]][0] for r in keep]]] if keep else []) + new_vecs
    embeddings = torch.cat(vecs) if vecs else torch.empty(0, old.embeddings.shape[1] if old else 0)
    meta = {"model": model_id, "weights": weights, "source": source_id, "dim": int(embeddings.shape[1]),
            "view": (old.meta["view"] if old and encoder is None else
                     {"size": encoder.view.size, "mean": list(encoder.view.mean), "std": list(encoder.view.std)}),
            "classes": names, "rows": keep + new_rows}  # fmt: skip
    present = {c["path"] for c in current}
    removed = sum(r["path"] not in present for r in old.rows) if old else 0
    if old is None or new_rows or len(keep) != len(old.rows):
        _save(out, meta, embeddings)
        update_graph(out, meta["build"], embeddings, old.meta["build"] if old else None,
                     appended=old is not None and len(keep) == len(old.rows))
    seconds = time.perf_counter() - start
    return {"index": str(out), "rows": len(meta["rows"]), "embedded": len(new_rows), "kept": len(keep),
            "removed": removed, "failed": failed, "seconds": seconds,
            "images_per_s": len(new_rows) / embed_seconds if new_rows else 0.0}  # fmt: skip


def search(index: str | Path, image: str | Path | None = None, text: str | None = None, k: int = 10,
           device: str | None = None) -> list[dict]:  # fmt: skip
    """The ``k`` rows most similar to ``image`` (a file) or ``text`` (image-text models only), best
    first: ``{"rank", "path", "score", "label"}`` with ``score`` the cosine similarity."""
    if (image is None) == (text is None):
        raise SearchError("search by --image PATH or by --text TEXT (one of them)")
    idx = open_index(index)
    encoder = load_encoder(idx.meta["model"], weights=idx.meta.get("weights"), device=device)
    if image is not None:
        try:
            query = encoder.encode_image(load_image(image, encoder.view.size, encoder.in_chans)[None]).cpu()
        except OSError as e:
            raise SearchError(f"cannot read the query image {image}: {e}") from e
    else:
        query = encoder.encode_text([text]).cpu()
    scores, order = (t[0] for t in search_rows(Path(index), idx.meta["build"], idx.embeddings, query, k))
    base = Path(idx.meta["source"])
    return [{"rank": r + 1, "path": str(base / idx.rows[i]["path"]) if base.is_dir() else idx.rows[i]["path"],
             "score": round(float(s), 4), "label": idx.rows[i]["label"]}
            for r, (s, i) in enumerate(zip(scores.tolist(), order.tolist()))]  # fmt: skip


def precision_at_k(embeddings: torch.Tensor, labels: list, k: int = 10, classes: list | None = None,
                   chunk: int = 1024) -> dict:  # fmt: skip
    """Image-to-image precision@k: each row queries all others (itself excluded); the share of its
    ``k`` nearest rows with its class, averaged per class (``by_class``, in the order of ``classes``)
    and over all labelled rows (``mean``)."""
    present = {y for y in labels if y is not None}
    names = [c for c in classes or sorted(present) if c in present]
    if not names:
        raise SearchError("precision@k needs class labels (an embedded data set or a folder of class sub-folders)")
    code = {n: i for i, n in enumerate(names)}
    y = torch.tensor([code.get(v, -1) for v in labels])
    hits = torch.empty(len(y))
    for s in range(0, len(y), chunk):
        sim = embeddings[s : s + chunk] @ embeddings.T
        sim[torch.arange(sim.shape[0]), torch.arange(s, s + sim.shape[0])] = -float("inf")  # the query itself
        nearest = sim.topk(k, dim=1).indices
        hits[s : s + chunk] = (y[nearest] == y[s : s + chunk, None]).float().mean(1)
    by_class = {n: round(100 * hits[y == i].mean().item(), 2) for i, n in enumerate(names)}
    return {"k": k, "mean": round(100 * hits[y >= 0].mean().item(), 2), "by_class": by_class}


def evaluate_index(index: str | Path, k: int = 10) -> dict:
    """Precision@k by class over the index's own rows (each row queries the rest), and search speed."""
    idx = open_index(index)
    start = time.perf_counter()
    result = precision_at_k(idx.embeddings, [r["label"] for r in idx.rows], k, idx.meta.get("classes"))
    seconds = time.perf_counter() - start
    return {**result, "rows": len(idx.rows), "queries_per_s": round(len(idx.rows) / seconds, 1)}
