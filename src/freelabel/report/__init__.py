"""An HTML report of a run (or of a pretrained model): one self-contained file, every picture inline.

:func:`make_report` reads the run directory (config, ``metrics.json``, TensorBoard events, the files
the method left), embeds a sample of the test set with the trained backbone for a t-SNE map and
nearest-neighbour grids, and writes ``report.html``. :func:`report_pretrained` does the same for a
pretrained model on labelled data. The page makes no requests: it opens from disk or an e-mail.
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import logging
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..data.sources import sample
from ..encoder import Encoder
from ..errors import DataError
from . import figures

PACKAGES = ("torch", "torchvision", "timm", "lightning", "transformers", "scikit-learn", "matplotlib")
SCALARS = {"train/loss": "loss", "train/lr": "learning rate", "train/images_per_s": "images / s"}


@dataclass
class Sample:
    """Pooled features of seeded samples of the readable test and training images, and where those images
    are in their splits (``*_items``: a row's item of ``*_set``)."""

    test: torch.Tensor
    test_labels: np.ndarray
    test_items: np.ndarray
    test_set: Dataset
    train: torch.Tensor
    train_labels: np.ndarray
    train_items: np.ndarray
    train_set: Dataset
    classes: list[str]


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def images(ds: Dataset, idx) -> np.ndarray:
    """``uint8 [len(idx), C, H, W]``: the pictures of items ``idx`` (any index array shape)."""
    idx = np.asarray(idx)
    return np.stack([ds[int(i)][0].numpy() for i in idx.ravel()]).reshape(*idx.shape, *ds[0][0].shape)


def sample_features(
    encoder: Encoder, data: str, train: Dataset, test: Dataset, train_images: int = 10_000, test_images: int = 2000
) -> Sample:
    """Pooled features of seeded samples of ``test_images`` test and ``train_images`` training images: rows
    of the whole split's features where k-NN or the linear probe left them in the cache, else extracted."""
    from ..evaluate.features import cached, extract

    out = {}
    for split, ds, n in (("train", train, train_images), ("test", test, test_images)):
        part, items = sample(ds, n)
        whole = cached(encoder, data, split, len(ds))
        if whole is not None:
            rows = torch.isin(whole.index, items)
            x, labels, found = whole.x[rows], whole.labels[rows], whole.index[rows]
        else:
            made = extract(encoder, part, describe=f"report: features of {len(items)} {split} images")
            x, labels, found = made.x, made.labels, items[made.index]
        out[split] = (x, labels.numpy(), found.numpy(), ds)
    classes = list(getattr(test, "classes", None) or [])
    return Sample(*out["test"], *out["train"], classes=classes)


def tsne(features: torch.Tensor) -> np.ndarray:
    """2-D t-SNE (scikit-learn) of L2-normalised features, reduced to 50 dimensions by PCA first."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = F.normalize(features.float(), dim=1).numpy()
    if x.shape[1] > 50:
        x = PCA(50, random_state=0).fit_transform(x)
    return TSNE(2, perplexity=min(30.0, len(x) / 4), init="pca", random_state=0).fit_transform(x)


def nearest(sample: Sample, queries: int = 12, k: int = 8) -> tuple[bytes, float]:
    """The neighbour grid of ``queries`` test images (classes taken in turn) and the share of all
    neighbours that have their query's class."""
    labels = sample.test_labels
    by_class = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    picked: list[int] = []
    while len(picked) < min(queries, len(labels)):  # the first image of each class, then the second, ...
        picked += [members.pop(0) for members in by_class if members][: queries - len(picked)]
    sim = F.normalize(sample.test[picked].float(), dim=1) @ F.normalize(sample.train.float(), dim=1).T
    top, idx = sim.topk(min(k, sim.shape[1]), dim=1)
    idx = idx.numpy()
    found_labels = sample.train_labels[idx]
    picture = figures.neighbours(
        images(sample.test_set, sample.test_items[picked]),
        labels[picked],
        images(sample.train_set, sample.train_items[idx]),
        found_labels,
        top.numpy(),
        sample.classes,
    )
    return picture, float((found_labels == labels[picked, None]).mean() * 100)


def sample_knn(sample: Sample, pixels: bool = False) -> dict[str, float]:
    """k-NN top-1 of the sampled test images against the sampled training images; ``pixels``: of
    their raw pixels (at most 32 px a side) instead of their features."""
    from ..evaluate.knn import knn_accuracy

    def raw(ds: Dataset, items: np.ndarray) -> torch.Tensor:
        chunks = (torch.as_tensor(images(ds, items[s : s + 256])).float() for s in range(0, len(items), 256))
        return torch.cat([F.interpolate(x, size=min(32, x.shape[-1]), mode="area").flatten(1) for x in chunks])

    if pixels:
        train, test = raw(sample.train_set, sample.train_items), raw(sample.test_set, sample.test_items)
    else:
        train, test = sample.train, sample.test
    return knn_accuracy(train, torch.as_tensor(sample.train_labels), test, torch.as_tensor(sample.test_labels))


def environment(precision: str | None = None, devices: int | None = None) -> dict[str, str]:
    """Versions and hardware of this machine (and the run's precision and device count when known)."""
    from ..hardware import cpu_description

    env = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("freelabel", *PACKAGES):
        try:
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env[name] = "not installed"
    env["cpu"] = cpu_description()
    env["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    if precision:
        env["run precision"] = precision
    if devices:
        env["run devices"] = str(devices)
    return env


def read_scalars(tb: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar of the run's TensorBoard events by tag, as (steps, values)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS as KIND
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not tb.is_dir():
        return {}
    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # not "No path found after ..." for every file
    acc = EventAccumulator(str(tb), size_guidance={KIND: 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()[KIND]:
        events = acc.Scalars(tag)
        out[tag] = (np.array([e.step for e in events]), np.array([e.value for e in events]))
    return out


def training_curves(run: Path, metrics: dict, data: str) -> bytes | None:
    """The curves figure: loss, lr, images/s, the method's other scalars, and k-NN top-1."""
    scalars = read_scalars(run / "tb")
    pretrain = metrics.get("pretrain", {})
    curve = pretrain.get("knn_curve", [])
    points = curve + pretrain.get("health", [])
    clock = {0: 0.0} | {p["step"]: p["minutes"] for p in points}  # the run's clock, read at each evaluation
    if pretrain.get("steps"):
        clock[pretrain["steps"]] = pretrain["train_minutes"]  # and at the end
    if len(clock) < 2 or not scalars:
        return None
    panels = {SCALARS[t]: scalars[t] for t in SCALARS if t in scalars}
    panels |= {t.removeprefix("train/"): v for t, v in scalars.items() if t.startswith("train/") and t not in SCALARS}
    panels |= {f"health: {t.removeprefix('health/')}": v for t, v in scalars.items() if t.startswith("health/")}
    knn = metrics.get("knn", {}) if metrics.get("knn", {}).get("data") == data else {}
    baselines = {}
    for k in (20, 200):
        points = {p["step"]: p[f"top1_k{k}"] for p in curve if f"top1_k{k}" in p}
        final = knn.get("trained", {}).get(f"top1_k{k}")
        if final is not None:
            points[pretrain["steps"]] = final  # the full evaluation at the end
        if points:
            name = f"k-NN top-1 (%), k={k}"
            panels[name] = (np.array(sorted(points)), np.array([points[s] for s in sorted(points)]))
            baselines[name] = {
                b.replace("_", " "): knn[b][f"top1_k{k}"]
                for b in ("random_init", "raw_pixels")
                if f"top1_k{k}" in knn.get(b, {})
            }
    steps = sorted(clock)
    return figures.curves(panels, (np.array(steps, float), np.array([clock[s] for s in steps])), baselines)


def metric_tables(metrics: dict) -> list[dict]:
    """Each evaluation in ``metrics.json`` as a table: rows are what was scored (trained, random init,
    raw pixels, ...), columns the numbers; the section's other values become its note."""
    tables = []
    for section, values in metrics.items():
        if not isinstance(values, dict):
            continue
        if section == "pretrain":
            rows = {"run": {k: v for k, v in values.items() if not isinstance(v, (list, dict))}}
            last = values.get("knn_curve", [{}])[-1]  # the last online k-NN
            rows["run"] |= {
                f"online k-NN {k} (step {last['step']})": v for k, v in last.items() if k.startswith("top1")
            }
            health = values.get("health", [{}])[-1]  # the last health check
            rows["run"] |= {
                f"health: {k.replace('_', ' ')} (step {health['step']})": v
                for k, v in health.items()
                if k not in ("step", "minutes", "rank_of")
            }
        else:
            rows = {
                k: {c: x for c, x in v.items() if not isinstance(x, (list, dict))}
                for k, v in values.items()
                if isinstance(v, dict)
            }
        note = {k: v for k, v in values.items() if not isinstance(v, (list, dict))} if section != "pretrain" else {}
        columns = list(dict.fromkeys(c for r in rows.values() for c in r))
        if section == "pretrain":  # one row, many columns: show it turned
            tables.append(
                {
                    "name": section,
                    "columns": ["value"],
                    "note": note,
                    "rows": [(k, [_fmt(v)]) for k, v in rows["run"].items()],
                }
            )
        elif rows:
            tables.append(
                {
                    "name": section,
                    "columns": columns,
                    "note": note,
                    "rows": [(name.replace("_", " "), [_fmt(r.get(c)) for c in columns]) for name, r in rows.items()],
                }
            )
    return tables


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) >= 0.01 or v == 0 else f"{v:.3g}"
    return str(v)


def artefacts(run: Path, per_folder: int = 16) -> list[dict]:
    """What the method (or an evaluation) left in the run directory: each picture at its top level
    (reconstructions, colorization grids), the pictures of each sub-folder as one gallery (attention
    maps; the first ``per_folder``), and jigsaw's permutation set drawn."""
    found = []
    for path in sorted(run.glob("*.png")):
        if path.name != "report-screenshot.png":
            found.append({"title": path.name, "src": data_uri(path.read_bytes())})
    for folder in sorted(p for p in run.iterdir() if p.is_dir() and p.name not in ("checkpoints", "tb")):
        pictures = sorted(folder.glob("*.png"))
        if pictures:
            gallery = [{"title": p.stem, "src": data_uri(p.read_bytes())} for p in pictures[:per_folder]]
            shown = f" (first {per_folder} of {len(pictures)})" if len(pictures) > per_folder else ""
            found.append({"title": f"{folder.name}/{shown}", "gallery": gallery})
    perms = run / "permutations.json"
    if perms.is_file():
        found.append(
            {
                "title": "permutations.json",
                "src": data_uri(figures.permutations(np.array(json.loads(perms.read_text())))),
            }
        )
    return found


def _feature_sections(sample: Sample) -> dict:
    xy = tsne(sample.test)
    grid, agree = nearest(sample)
    spread = figures.spread(xy, 24)
    return {
        "map": data_uri(
            figures.embedding_map(
                xy, sample.test_labels, spread, images(sample.test_set, sample.test_items[spread]), sample.classes
            )
        ),
        "map_images": len(sample.test),
        "neighbours": data_uri(grid),
        "neighbours_agree": agree,
        "train_images": len(sample.train),
    }


def render(context: dict, template: str = "report.html.j2") -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("freelabel.report", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template(template).render(**context)


def make_report(run: str | Path, train_images: int = 10_000, test_images: int = 2000) -> Path:
    """Write ``RUN/report.html`` for a pretraining run and return its path."""
    from ..run import load_config, read_metrics

    run = Path(run)
    cfg = load_config(run)
    metrics = read_metrics(run)
    pretrain = metrics.get("pretrain", {})
    curves = training_curves(run, metrics, cfg.data.name)
    context = {
        "title": f"{cfg.method} · {cfg.backbone.name} · {cfg.data.name}",
        "subtitle": str(run.resolve()),
        "config": (run / "config.yaml").read_text(),
        "environment": environment(pretrain.get("precision"), pretrain.get("devices")),
        "tables": metric_tables(metrics),
        "artefacts": artefacts(run),
        "curves": data_uri(curves) if curves else None,
        "log_every": cfg.log_every,
    }
    context |= _features(str(run), cfg.data.name, train_images, test_images)
    return _write(context, run / "report.html")


def report_pretrained(
    model: str,
    data: str = "fashion-mnist",
    out: str | Path = "report",
    train_images: int = 10_000,
    test_images: int = 2000,
) -> Path:
    """Write ``OUT/report.html`` for a pretrained model (hub name, local folder or ``torchvision:NAME``)
    on labelled ``data``: k-NN top-1 on the samples next to raw pixels, the map and the neighbours."""
    context = {
        "title": f"{model} · {data}",
        "subtitle": "pretrained model",
        "environment": environment(),
        "artefacts": [],
        "curves": None,
        "log_every": None,
    }
    context |= _features(model, data, train_images, test_images, knn=True)
    if context["features"] is None:
        raise DataError(context["features_note"])
    return _write(context, Path(out) / "report.html")


def _features(spec: str, data: str, train_images: int, test_images: int, knn: bool = False) -> dict:
    """The map and neighbour sections of encoder ``spec`` on ``data`` (and, with ``knn``, the k-NN table
    on the samples, the encoder's config and its tables), or a note saying why there are none."""
    from ..data.registry import NAMED, open_dataset
    from ..encoder import load_encoder

    encoder = load_encoder(spec)
    cfg = encoder.config
    size, channels = (
        (cfg.data.image_size or cfg.views.size, cfg.data.channels or 3)
        if cfg
        else (None if data in NAMED else encoder.view.size, 3)
    )
    context: dict = {"features": None, "features_note": None}
    if knn:
        view = encoder.view
        context["config"] = json.dumps(
            {"model": spec, "data": data, "view": {"size": view.size, "mean": view.mean, "std": view.std}}, indent=2
        )
    try:
        train, test = open_dataset(data, "train", size, channels), open_dataset(data, "test", size, channels)
    except DataError as e:  # the rest of a run's report needs no images
        context["features_note"] = f"No feature map or neighbours: the data cannot be opened here ({e})."
        return context
    if not _labelled(test):
        context["features_note"] = f"No feature map or neighbours: {data} has no class labels to colour them by."
        return context
    sample = sample_features(encoder, data, train, test, train_images, test_images)
    context["features"] = _feature_sections(sample)
    if knn:
        scores = {
            "data": data,
            "train_images": len(sample.train),
            "test_images": len(sample.test),
            "pretrained": sample_knn(sample),
            "raw_pixels": sample_knn(sample, pixels=True),
        }
        context["tables"] = metric_tables({"knn (sample)": scores})
    return context


def _write(context: dict, path: Path) -> Path:
    from ..files import write_text

    return write_text(path, render(context))


def _labelled(ds: Dataset) -> bool:
    return int(ds[0][1]) >= 0
