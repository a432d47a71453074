"""An embedding index: every image of a folder (or of an embedded data set's split) as one
L2-normalised vector, searched by cosine similarity with an image or, for image-text models, a text.

On disk an index is a folder with ``index.json`` (the model and the fingerprint of its weights, its
input view, the source, per row the path, size, mtime and class, and the build id), the build's
``embeddings-BUILD.safetensors`` (``[N, D]`` float32) and, above a size, its ANN graph ``ann-BUILD.faiss``.
An update writes the new build's files beside the old ones and then replaces ``index.json``, the one
step that commits it; only then are the old build's files deleted. So an update stopped at any point
leaves the old index or the new one, whole. Manifest and embeddings are checked for consistency when
opened. A new ``build`` over the same
folder embeds only new or changed files (by size and mtime) and drops the rows of deleted ones, unless
the model's weights changed (a run trained further): then every image is embedded again.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..data.images import BadImage, load_image
from ..data.loader import sequential
from ..data.registry import NAMED, open_dataset
from ..data.sources import ImageFiles, scan_folder
from ..encoder import load_encoder
from ..errors import SearchError
from ..files import atomic_file, write_json
from .ann import graph_file, search_rows, update_graph

EMBEDDINGS, MANIFEST = "embeddings.safetensors", "index.json"  # EMBEDDINGS: an index made before builds had names
_BUILD_FILE = re.compile(r"embeddings(-[0-9a-f]{32})?\.safetensors")


@dataclass
class Index:
    meta: dict
    embeddings: torch.Tensor  # [N, D], L2-normalised

    @property
    def rows(self) -> list[dict]:
        return self.meta["rows"]


def open_index(path: str | Path) -> Index:
    """The index at ``path``, checked: a crafted or inconsistent index is refused with a clear error."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise SearchError(f"{path} is not an index (no {MANIFEST}); make one with `freelabel index build`")
    from safetensors import SafetensorError, safe_open

    broken = f"{path} is a damaged index"
    try:
        meta = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        vectors = meta.get("embeddings", EMBEDDINGS) if isinstance(meta, dict) else EMBEDDINGS
        if not isinstance(vectors, str) or not _BUILD_FILE.fullmatch(vectors):
            raise ValueError(f"{MANIFEST} names {vectors!r} as its embeddings file")
        with safe_open(str(path / vectors), "pt") as f:
            build = (f.metadata() or {}).get("build")
            names = list(f.keys())
            embeddings = f.get_tensor("embeddings") if names == ["embeddings"] else None
    except (OSError, UnicodeDecodeError, ValueError, SafetensorError) as e:
        raise SearchError(
            f"{broken} ({type(e).__name__}: {e}); build it again with `freelabel index build`".splitlines()[0]
        ) from None
    if not isinstance(meta, dict):
        raise SearchError(f"{broken}: {MANIFEST} is not a JSON object; build it again with `freelabel index build`")
    if build != meta.get("build"):
        raise SearchError(
            f"{path}: {EMBEDDINGS} and {MANIFEST} are from different builds (an interrupted update); "
            "run the same `freelabel index build` again"
        )
    _check_index(meta, embeddings, broken)
    return Index(meta, embeddings)


def _check_index(meta: dict, embeddings: torch.Tensor | None, broken: str) -> None:
    """Refuse a manifest and embeddings that do not fit each other (types, counts, sizes, values)."""
    rows = meta.get("rows")
    problem = None
    if embeddings is None or embeddings.ndim != 2 or not embeddings.is_floating_point():
        problem = f"{EMBEDDINGS} must hold one 2-D float tensor named 'embeddings'"
    elif not all(isinstance(meta.get(k), str) for k in ("model", "source")) or not isinstance(rows, list):
        problem = f"{MANIFEST} needs a model, a source and a list of rows"
    elif len(rows) != len(embeddings) or meta.get("dim") != embeddings.shape[1]:
        problem = f"{MANIFEST} lists {len(rows)} rows of dimension {meta.get('dim')!r}, {EMBEDDINGS} holds {tuple(embeddings.shape)}"
    elif not all(
        isinstance(r, dict)
        and isinstance(r.get("path"), str)
        and (r.get("label") is None or isinstance(r.get("label"), str))
        for r in rows
    ):
        problem = f"every row of {MANIFEST} needs a path and a label (a string or null)"
    elif any(Path(r["path"]).is_absolute() or ".." in Path(r["path"]).parts for r in rows):
        problem = f"a row of {MANIFEST} names a path outside the indexed folder"
    elif not bool(torch.isfinite(embeddings).all()):
        problem = f"{EMBEDDINGS} holds NaN or infinite values"
    elif not isinstance(meta.get("view"), dict) or not isinstance(meta.get("classes", []), list):
        problem = f"{MANIFEST} needs the model's view and a list of classes"
    if problem:
        raise SearchError(f"{broken}: {problem}; build it again with `freelabel index build`")


def _commit(path: Path, meta: dict, embeddings: torch.Tensor, old: Index | None, appended: bool) -> None:
    """Write a new build of the index: its embeddings and graph under names of their own, then the
    manifest that names them (the commit), then delete the files of every other build."""
    build = meta["build"] = uuid.uuid4().hex
    meta["embeddings"] = f"embeddings-{build}.safetensors"
    embeddings = embeddings.contiguous()
    with atomic_file(path / meta["embeddings"], embeddings.numel() * embeddings.element_size()) as tmp:
        save_file({"embeddings": embeddings}, str(tmp), {"build": build})
    update_graph(path, build, embeddings, old.meta["build"] if old else None, appended)
    write_json(path / MANIFEST, meta)
    for stale in [*path.glob("embeddings*.safetensors"), *path.glob("ann-*.faiss")]:
        if stale.name not in (meta["embeddings"], graph_file(path, build).name):
            stale.unlink(missing_ok=True)


def build_index(
    source: str | Path,
    model: str | Path,
    out: str | Path,
    split: str = "test",
    batch_size: int = 64,
    device: str | None = None,
    workers: int = 0,
    weights: str | Path | None = None,
) -> dict:
    """Create or update the index at ``out`` over ``source`` (a folder, or an embedded data set name
    whose ``split`` is indexed) with ``model`` (and its ``weights``, see :func:`freelabel.encoder.load_encoder`). Returns counts
    (``embedded``: new or changed files, ``kept``, ``removed``: deleted files, ``failed``: unreadable
    files, ``rows``) and speed (``seconds`` in all, model loading included; ``images_per_s`` of
    decoding and embedding)."""
    if batch_size < 1:
        raise SearchError(f"--batch-size must be a positive number of images, got {batch_size}")
    out = Path(out)
    embedded = str(source) in NAMED
    model_id = str(model) if not Path(model).expanduser().exists() else str(Path(model).expanduser().resolve())
    source_id = f"{source}:{split}" if embedded else str(Path(source).expanduser().resolve())
    old = open_index(out) if (out / MANIFEST).exists() else None
    if old is not None and (old.meta["model"], old.meta["source"]) != (model_id, source_id):
        raise SearchError(
            f"{out} indexes {old.meta['source']} with {old.meta['model']}; give another --out for "
            f"{source_id} with {model_id}"
        )
    start = time.perf_counter()
    if embedded:
        ds = open_dataset(str(source), split)
        names = list(getattr(ds, "classes", []))
        current = [
            {"path": f"{source}/{split}/{i:06d}", "label": names[int(y)] if names else None}
            for i, y in enumerate(ds.labels.tolist())
        ]
    else:
        paths, labels, names, _ = scan_folder(Path(source).expanduser())
        root = Path(source).expanduser().resolve()
        current = []
        for p, y in zip(paths, labels):
            st = p.stat()
            current.append(
                {
                    "path": str(p.relative_to(Path(source).expanduser())),
                    "size": st.st_size,
                    "mtime": st.st_mtime_ns,
                    "label": names[y] if y >= 0 else None,
                }
            )
    weights = str(Path(weights).expanduser().resolve()) if weights is not None else None
    encoder = load_encoder(model, weights=weights, device=device)
    fingerprint = encoder.fingerprint
    model_changed = old is not None and old.meta.get("fingerprint") != fingerprint
    if model_changed:
        old = None  # the model's weights changed (a run trained further): every vector is stale, embed all again
    previous = {r["path"]: (i, r) for i, r in enumerate(old.rows)} if old else {}
    keep = sorted(
        (c for c in current if c["path"] in previous and previous[c["path"]][1] == c),
        key=lambda c: previous[c["path"]][0],
    )  # in the old order: new rows only extend the ANN graph
    todo = [i for i, c in enumerate(current) if not (c["path"] in previous and previous[c["path"]][1] == c)]
    new_rows, new_vecs, failed = [], [], []
    embed_start = time.perf_counter()
    if todo:
        if embedded:
            batches = (
                (ds.images[todo[s : s + batch_size]], todo[s : s + batch_size], [])
                for s in range(0, len(todo), batch_size)
            )
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
    meta = {
        "model": model_id,
        "weights": weights,
        "fingerprint": fingerprint,
        "source": source_id,
        "dim": int(embeddings.shape[1]),
        "view": {"size": encoder.view.size, "mean": list(encoder.view.mean), "std": list(encoder.view.std)},
        "classes": names,
        "rows": keep + new_rows,
    }
    present = {c["path"] for c in current}
    removed = sum(r["path"] not in present for r in old.rows) if old else 0
    if old is None or new_rows or len(keep) != len(old.rows):
        _commit(out, meta, embeddings, old, appended=old is not None and len(keep) == len(old.rows))
    seconds = time.perf_counter() - start
    return {
        "index": str(out),
        "rows": len(meta["rows"]),
        "embedded": len(new_rows),
        "kept": len(keep),
        "removed": removed,
        "failed": failed,
        "seconds": seconds,
        "fingerprint": fingerprint,
        "model_changed": model_changed,
        "images_per_s": len(new_rows) / embed_seconds if new_rows else 0.0,
    }


def search(
    index: str | Path, image: str | Path | None = None, text: str | None = None, k: int = 10, device: str | None = None
) -> list[dict]:
    """The ``k`` rows most similar to ``image`` (a file) or ``text`` (image-text models only), best
    first: ``{"rank", "path", "score", "label"}`` with ``score`` the cosine similarity."""
    if (image is None) == (text is None):
        raise SearchError("search by --image PATH or by --text TEXT (one of them)")
    if k < 1:
        raise SearchError(f"-k must be a positive number of results, got {k}")
    idx = open_index(index)
    encoder = load_encoder(idx.meta["model"], weights=idx.meta.get("weights"), device=device)
    if idx.meta.get("fingerprint") not in (None, encoder.fingerprint):
        raise SearchError(
            f"{index} is stale: {idx.meta['model']} has changed since it was built (trained further?); "
            f"bring it up to date with `freelabel index build {idx.meta['source']} --model "
            f"{idx.meta['model']} --out {index}`"
        )
    if image is not None:
        try:
            query = encoder.encode_image(load_image(image, encoder.view.size, encoder.in_chans)[None]).cpu()
        except BadImage as e:
            raise SearchError(f"cannot read the query image {image}: {e}") from None
    else:
        query = encoder.encode_text([text]).cpu()
    scores, order = (t[0] for t in search_rows(Path(index), idx.meta["build"], idx.embeddings, query, k))
    base = Path(idx.meta["source"])
    return [
        {
            "rank": r + 1,
            "path": str(base / idx.rows[i]["path"]) if base.is_dir() else idx.rows[i]["path"],
            "score": round(float(s), 4),
            "label": idx.rows[i]["label"],
        }
        for r, (s, i) in enumerate(zip(scores.tolist(), order.tolist()))
    ]


def precision_at_k(
    embeddings: torch.Tensor, labels: list, k: int = 10, classes: list | None = None, chunk: int = 1024
) -> dict:
    """Image-to-image precision@k: each row queries all others (itself excluded); the share of its
    ``k`` nearest rows with its class, averaged per class (``by_class``, in the order of ``classes``)
    and over all labelled rows (``mean``)."""
    present = {y for y in labels if y is not None}
    names = [c for c in classes or sorted(present) if c in present]
    if not names:
        raise SearchError("precision@k needs class labels (an embedded data set or a folder of class sub-folders)")
    if k < 1 or k >= len(labels):
        raise SearchError(f"precision@k needs 1 <= k < the {len(labels)} rows of the index, got k={k}")
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
