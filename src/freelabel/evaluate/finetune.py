"""Fine-tuning: the backbone plus a linear head trained with labels, as in the MAE and BEiT papers'
fine-tuning recipes scaled down: AdamW, warm-up then cosine, layer-wise learning-rate decay for ViTs,
random-resized crops and flips, label smoothing; a budget of epochs or minutes.

Low-label mode: ``labels="1%"``, ``"10%"`` or ``"N"`` (N images per class) keeps a seeded per-class
subset of the training set, saved with the classifier as a file list; a file list (``subset=``) picks
the images instead. ``init="random"`` trains the same backbone from its random initialisation with
the same labels and budget: the supervised-from-scratch reference.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from ..config import parse_labels
from ..data.sources import TensorImages
from ..data.views import ViewConfig, Views
from ..encoder import Encoder
from ..errors import ConfigError, DataError
from . import scalars
from .classifier import Classifier
from .common import (
    autocast_enabled,
    class_names,
    labels_of,
    load_model,
    open_split,
    progress,
    progress_bar,
    record,
    timm_vit,
)

log = logging.getLogger("freelabel")
SUBSET_FILE = "labels-subset.txt"


def choose_subset(labels: torch.Tensor, spec: str, seed: int = 0) -> torch.Tensor:
    """Sorted indices of a seeded per-class subset: ``round(fraction * n_class)`` (at least 1) or ``N``
    images of every class (all of a class with fewer)."""
    amount = parse_labels(spec)
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in labels.unique().tolist():
        members = (labels == c).nonzero()[:, 0]
        n = max(1, round(amount * len(members))) if isinstance(amount, float) else min(amount, len(members))
        chosen.append(members[torch.randperm(len(members), generator=g)[:n]])
    return torch.cat(chosen).sort().values


def item_names(ds: Dataset) -> list[str]:
    """How a subset file names the items of ``ds``: file paths, or row numbers of an in-memory set."""
    return [str(p) for p in ds.paths] if hasattr(ds, "paths") else [str(i) for i in range(len(ds))]


def read_subset(path: str | Path, ds: Dataset) -> torch.Tensor:
    """Indices of the items a file list names (one per line: a path, or a row number of an embedded set;
    blank lines and ``#`` comments ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"subset file {path} does not exist; give a file with one image path (or row number) per line")
    names = item_names(ds)
    index = {n: i for i, n in enumerate(names)} | {str(Path(n).resolve()): i for i, n in enumerate(names)}
    lines = [line.split("\t", 1)[0].strip() for line in path.read_text().splitlines()]
    wanted = [_row_or_path(w, path.parent) for w in lines if w and not w.startswith("#")]
    missing = [w for w in wanted if w not in index]
    if missing or not wanted:
        raise DataError(
            f"{path}: {len(missing)} of {len(wanted)} lines name no image of the training data "
            f"(first: {missing[0] if missing else 'none listed'})"
        )
    return torch.tensor(sorted({index[w] for w in wanted}))


def _row_or_path(line: str, folder: Path) -> str:
    """A subset line as :func:`item_names` spells it: ``NAME/SPLIT/INDEX`` (``freelabel curate``'s lines for an
    embedded set) as its row number; a path relative to the list's folder, resolved."""
    parts = line.split("/")
    if len(parts) == 3 and parts[2].isdigit() and not Path(line).exists():
        return str(int(parts[2]))
    if line.isdigit():
        return str(int(line))
    p = Path(line).expanduser()
    return str((p if p.is_absolute() or p.exists() else folder / p).resolve())


def subset(ds: Dataset, idx: torch.Tensor) -> Dataset:
    if isinstance(ds, TensorImages):
        return TensorImages(ds.images[idx], ds.labels[idx], ds.classes)
    return Subset(ds, idx.tolist())


def train_view(view: ViewConfig) -> ViewConfig:
    """The usual fine-tuning augmentation: random-resized crop and flip, at the model's size and normalisation."""
    return ViewConfig(
        size=view.size, scale=(0.35, 1.0), hflip=0.5, jitter=0.0, grayscale=0.0, blur=0.0, mean=view.mean, std=view.std
    )


def param_groups(
    model: nn.Module, backbone: nn.Module, lr: float, weight_decay: float, layer_decay: float
) -> list[dict]:
    """AdamW groups: no decay on biases and norms; for a timm ViT, block ``i`` of ``L`` gets ``lr *
    layer_decay ** (L - i)`` (embeddings ``L + 1`` levels down), the head the full ``lr``."""
    vit = timm_vit(backbone)
    depth = len(vit.blocks) if vit is not None else 0
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = depth + 1
        if vit is not None and name.startswith("backbone.model."):
            rest = name.removeprefix("backbone.model.")
            layer = (
                int(rest.split(".")[1]) + 1
                if rest.startswith("blocks.")
                else (0 if not rest.startswith(("norm", "fc_norm")) else depth + 1)
            )
        scale = layer_decay ** (depth + 1 - layer)
        decay = 0.0 if p.ndim <= 1 or name.endswith((".cls_token", ".pos_embed", ".reg_token")) else weight_decay
        groups.setdefault((scale, decay), []).append(p)
    return [{"params": ps, "lr": lr * s, "lr_scale": s, "weight_decay": d} for (s, d), ps in groups.items()]


@torch.no_grad()
def accuracy(clf: Classifier, ds: Dataset, batch_size: int = 256) -> float:
    from ..data.loader import sequential

    clf.eval()
    device = clf.head.weight.device
    correct = total = 0
    for batch in progress(sequential(ds, batch_size), (len(ds) + batch_size - 1) // batch_size, "test"):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_enabled(device)):
            pred = clf(clf.model.preprocess(batch.images)).argmax(1).cpu()
        correct += int((pred == batch.labels).sum())
        total += len(batch.labels)
    return 100.0 * correct / max(1, total)


def train(
    model: Encoder,
    train: Dataset,
    classes: list[str],
    *,
    epochs: float | None = None,
    minutes: float | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    layer_decay: float = 0.75,
    batch_size: int = 256,
    warmup: float = 0.05,
    label_smoothing: float = 0.1,
    seed: int = 0,
) -> tuple[nn.Module, int]:
    """Fine-tune ``model.backbone`` with a new linear head for ``classes`` on labelled ``train``; a budget of ``epochs`` or
    ``minutes`` of training (default: 10 epochs and at least 500 steps); ``lr`` for a batch of 256, scaled
    linearly. Returns the classifier and the number of steps trained."""
    from ..data.loader import batches, steps_per_epoch

    if epochs is not None and minutes is not None:
        raise ConfigError("give fine-tuning one budget: epochs or minutes")
    if any(v is not None and v <= 0 for v in (epochs, minutes)) or batch_size < 1 or lr <= 0:
        raise ConfigError(
            f"fine-tuning needs a positive budget, batch size and learning rate; got epochs={epochs}, "
            f"minutes={minutes}, batch size {batch_size}, lr {lr}"
        )
    device = next(model.backbone.parameters()).device
    torch.manual_seed(seed)
    head = nn.Linear(model.backbone.embed_dim, len(classes))
    nn.init.trunc_normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    net = Classifier(model, head, classes).to(device)
    batch_size = min(batch_size, len(train))
    opt = torch.optim.AdamW(param_groups(net, model.backbone, lr * batch_size / 256, weight_decay, layer_decay))
    views, g = Views(train_view(model.view)), torch.Generator().manual_seed(seed)
    per_epoch = steps_per_epoch(len(train), batch_size)
    if epochs is None and minutes is None:  # the default: 10 epochs, and at least 500 steps
        epochs = max(10, math.ceil(500 / per_epoch))
    total = math.ceil(epochs * per_epoch) if epochs is not None else None
    autocast, start, step, epoch = autocast_enabled(device), time.perf_counter(), 0, 0

    def progress_now() -> float:
        return step / total if total is not None else (time.perf_counter() - start) / (60 * minutes)

    net.train()
    with progress_bar(f"fine-tune on {len(train)} labelled images", 1.0) as update:
        while progress_now() < 1:
            for batch in batches(train, batch_size, seed=seed, epoch=epoch):
                t = progress_now()
                if t >= 1:
                    break
                scale = t / warmup if t < warmup else 0.5 * (1 + math.cos(math.pi * (t - warmup) / (1 - warmup)))
                for group in opt.param_groups:
                    group["lr"] = group["lr_scale"] * lr * batch_size / 256 * scale
                images = batch.images.to(device)
                if images.shape[1] == 1 and model.in_chans == 3:  # grey data, colour model
                    images = images.expand(-1, 3, -1, -1)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    loss = F.cross_entropy(
                        net(views(images, g)), batch.labels.to(device), label_smoothing=label_smoothing
                    )
                if not torch.isfinite(loss):
                    raise ConfigError(f"fine-tuning diverged (loss {loss.item()}) at step {step}; lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                update(min(1.0, progress_now()))
            epoch += 1
    log.info("fine-tuned %d steps (%d epochs) in %.1f min", step, epoch, (time.perf_counter() - start) / 60)
    return net.eval(), step


def result_key(labels: str, init: str, seed: int) -> str:
    """Where :func:`finetune` records a result in ``metrics.json``'s ``finetune`` section."""
    return f"{labels}/{init}/seed{seed}"


def finetune(
    spec: str | Path,
    data: str | None = None,
    labels: str = "100%",
    *,
    subset_file: str | Path | None = None,
    init: str = "trained",
    epochs: float | None = None,
    minutes: float | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    layer_decay: float = 0.75,
    batch_size: int = 256,
    seed: int = 0,
    out: str | Path | None = None,
) -> dict:
    """Fine-tune a run's backbone (``init="random"``: its random initialisation, the supervised-from-scratch
    reference) or a pretrained model on ``labels`` of ``data``'s training set (or the images ``subset_file``
    lists), score it on the test set, keep it as a classifier folder at ``out`` (default
    ``RUN/finetune-LABELS-INIT-seedS``) with the subset's file list, and record it in ``metrics.json``
    under ``finetune``."""
    from .classifier import save_classifier

    if init not in ("trained", "random"):
        raise ConfigError(f"--init is trained or random, not {init!r}")
    model = load_model(spec, trained=init == "trained")
    data = data or model.default_data
    train_ds, test_ds = open_split(model, data, "train"), open_split(model, data, "test")
    train_labels = labels_of(train_ds)
    labels_of(test_ds)  # an unlabelled test split fails now, not after training
    idx = read_subset(subset_file, train_ds) if subset_file else choose_subset(train_labels, labels, seed)
    names = item_names(train_ds)
    n_classes = int(train_labels.max()) + 1
    start = time.perf_counter()
    clf, steps = train(
        model,
        subset(train_ds, idx),
        class_names(train_ds, n_classes),
        epochs=epochs,
        minutes=minutes,
        lr=lr,
        weight_decay=weight_decay,
        layer_decay=layer_decay,
        batch_size=batch_size,
        seed=seed,
    )
    minutes_used = (time.perf_counter() - start) / 60
    key = result_key("subset" if subset_file else labels, init, seed)
    results = {
        "data": data,
        "labels": labels if not subset_file else str(subset_file),
        "init": init,
        "seed": seed,
        "train_images": len(idx),
        "test_images": len(test_ds),
        "top1": accuracy(clf, test_ds),
        "steps": steps,
        "minutes": round(minutes_used, 2),
        "budget": {"epochs": epochs, "minutes": minutes},
    }
    default = model.run_dir / f"finetune-{key.replace('/', '-').replace('%', 'pc')}" if model.run_dir else None
    out = out or default
    if out is not None:
        listing = "".join(f"{names[i]}\n" for i in idx.tolist())
        results["classifier"] = str(
            save_classifier(clf, out, {"protocol": "finetune", **results}, {SUBSET_FILE: listing})
        )
    record(model, "finetune", {key: results})
    return results


def summary(r: dict) -> list[str]:
    done = f"{r['top1']:.2f}% ({r['train_images']} labelled images, {r['steps']} steps, {r['minutes']} min)"
    return [scalars("finetune", r), f"  {r['init']:12s} {done}"]
