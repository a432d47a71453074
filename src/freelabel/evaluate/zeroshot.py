"""Zero-shot classification by class names (Radford et al. 2021): each class is the mean of its
prompts' text embeddings (a prompt ensemble, averaged in embedding space), and an image takes the
class whose embedding it is most similar to.

Any image-text model works, freelabel's own CLIP/SigLIP runs and pretrained ones loaded through
transformers alike, as long as it has the two methods of :class:`ImageTextModel`.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..data.registry import open_dataset
from ..data.sources import ImageFiles, scan_folder
from ..encoder import Encoder, load_encoder
from ..errors import DataError, PretrainedError
from ..files import write_bytes
from ..run import update_metrics
from .features import Features, extract, features

log = logging.getLogger("freelabel")


class ImageTextModel(Protocol):
    """An image tower and a text tower into one embedding space."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images ``[B, C, H, W]`` (any size; the model resizes and normalises) -> L2-normalised
        embeddings ``[B, D]``."""
        ...

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> L2-normalised embeddings ``[T, D]``."""
        ...


# A short ensemble in the spirit of CLIP's ImageNet prompts; "{}" is the class name.
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "a close-up photo of a {}.",
    "a low resolution photo of a {}.",
    "an emoji of a {}.",
    "{}",
)


@torch.no_grad()
def class_embeddings(model: ImageTextModel, names: Sequence[str], templates: Sequence[str] = TEMPLATES) -> torch.Tensor:
    """``[C, D]``: for each class name, the L2-normalised mean of its prompts' normalised text embeddings."""
    if not names:
        raise ValueError("zero-shot classification needs at least one class name")
    prompts = [t.format(n) for n in names for t in templates]
    text = F.normalize(model.encode_text(prompts).float(), dim=-1).view(len(names), len(templates), -1)
    return F.normalize(text.mean(1), dim=-1)


@torch.no_grad()
def zeroshot_logits(model: ImageTextModel, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``[B, C]`` of each image to each class embedding of :func:`class_embeddings`."""
    return F.normalize(model.encode_image(images).float(), dim=-1) @ classes.T


def load_image_text(spec: str | Path, weights: str | Path | None = None, device: str | None = None) -> Encoder:
    """The encoder ``spec`` names (:func:`freelabel.encoder.load_encoder`), which must have a text tower."""
    encoder = load_encoder(spec, weights=weights, device=device)
    if not encoder.has_text:
        what = f"a {encoder.config.method} run" if encoder.config else "a vision-only model"
        raise PretrainedError(
            f"{spec} is {what}, with no text tower; zero-shot and retrieval need a clip or siglip run, or a CLIP/SigLIP model"
        )
    return encoder


def label_sets(ds: Dataset, found: Features) -> dict[str, tuple[list[str], torch.Tensor]]:
    """The class lists to classify ``ds`` by, with the label of each row of ``found``: its ``label_sets``
    (emoji: category, subcategory), else its ``classes``."""
    if getattr(ds, "label_sets", None):
        return {k: (names, labels[found.index]) for k, (names, labels) in ds.label_sets.items()}
    if getattr(ds, "classes", None) and (found.labels >= 0).all():
        return {"class": (list(ds.classes), found.labels)}
    raise DataError("zero-shot evaluation needs class names: labelled data (class sub-folders, fashion-mnist, emoji)")


def zeroshot_accuracy(
    model: ImageTextModel,
    images: torch.Tensor,
    names: Sequence[str],
    labels: torch.Tensor,
    templates: Sequence[str] = TEMPLATES,
) -> dict[str, float]:
    """Top-1 and top-5 (%) of image embeddings ``[N, D]`` classified among ``names``, with chance (a
    uniform guess) and the share of the most common class next to them."""
    classes = class_embeddings(model, names, templates).cpu()
    top = (images @ classes.T).topk(min(5, len(names)), dim=1).indices
    return {
        "top1": 100.0 * (top[:, 0] == labels).float().mean().item(),
        "top5": 100.0 * (top == labels[:, None]).any(1).float().mean().item(),
        "chance": 100.0 / len(names),
        "majority": 100.0 * labels.bincount().max().item() / len(labels),
        "classes": len(names),
        "images": len(labels),
    }


def evaluate_zeroshot(
    spec: str | Path, data: str | None = None, templates: Sequence[str] = TEMPLATES, weights: str | Path | None = None
) -> dict:
    """Zero-shot top-1 of a model on the test split of ``data`` (default: a run's own data) for each
    of its label sets; written to a run's ``metrics.json`` under ``zeroshot``."""
    model, name, ds = model_and_data(spec, data, "test", weights)
    found = features(model, name, "test", ds, kind="embedding")
    results = {
        "data": name,
        **{
            k: zeroshot_accuracy(model, found.x, names, y, templates) for k, (names, y) in label_sets(ds, found).items()
        },
    }
    record_metrics(model, "zeroshot", name, results)
    return results


def classify_folder(
    folder: str | Path,
    names: Sequence[str],
    spec: str | Path,
    out: str | Path | None = None,
    templates: Sequence[str] = TEMPLATES,
    weights: str | Path | None = None,
) -> list[tuple[str, str, float]]:
    """Zero-shot classification of every image under ``folder`` among ``names``: rows of (path,
    predicted name, cosine similarity), also written as CSV to ``out``. Unreadable files are skipped."""
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise DataError('zero-shot classification needs class names: --labels "cat,dog,bird"')
    model = load_image_text(spec, weights)
    paths = scan_folder(Path(folder).expanduser())[0]
    found = extract(model, ImageFiles(paths, [-1] * len(paths), [], model.view.size), kind="embedding")
    score, pred = (found.x @ class_embeddings(model, names, templates).cpu().T).max(1)
    rows = [(str(paths[i]), names[p], s) for i, p, s in zip(found.index.tolist(), pred.tolist(), score.tolist())]
    if out is not None:
        write_bytes(out, csv_bytes(rows))
    return rows


def csv_bytes(rows: Sequence[tuple[str, str, float]]) -> bytes:
    """Rows of (path, label, score) as CSV. A path that is not valid UTF-8 (read from the file system with
    Python's surrogate escapes) is written back as the exact bytes of its name, never lost or garbled."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "label", "score"])
    writer.writerows((p, n, f"{s:.4f}") for p, n, s in rows)
    return buffer.getvalue().encode("utf-8", errors="surrogateescape")


def model_and_data(
    spec: str | Path, data: str | None, split: str, weights: str | Path | None = None
) -> tuple[Encoder, str, Dataset]:
    """The image-text encoder of ``spec`` and the ``split`` of ``data`` (default: a run's own data)."""
    model = load_image_text(spec, weights)
    if data is None:
        if model.config is None:
            raise DataError(f"{spec} is not a run directory: name the data to evaluate on with --data")
        data = model.config.data.name
    return model, data, open_dataset(data, split, model.view.size)


def record_metrics(model: Encoder, section: str, data: str, results: dict) -> None:
    """Add results to a run's ``metrics.json[section][data]`` (pretrained models have no run directory)."""
    if model.run_dir is not None:
        update_metrics(model.run_dir, section, {data: results})


def summary(results: dict) -> list[str]:
    """The results as JSON."""
    import json

    return [json.dumps(results, indent=2)]
