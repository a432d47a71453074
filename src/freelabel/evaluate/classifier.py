"""A classifier folder: the user's model at the end of a linear probe or fine-tuning, and ``predict``.

The folder holds ``backbone.safetensors`` and ``head.safetensors`` (a linear layer on the pooled
features), ``classifier.json`` (class names, preprocessing, where the backbone came from, how it was
trained) and, for a backbone from a run, the run's ``config.yaml``: the folder is then also a run
directory, so that ``freelabel export CLASSIFIER --format safetensors|timm|transformers`` exports its
backbone like any run's.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from ..data.views import ViewConfig
from ..encoder import Encoder
from ..errors import ConfigError, DataError, RunError
from ..files import atomic_folder, write_text
from .common import progress

INFO, HEAD = "classifier.json", "head.safetensors"


class Classifier(nn.Module):
    """Backbone + linear head; ``forward`` takes normalised images and gives class logits."""

    def __init__(self, model: Encoder, head: nn.Linear, classes: list[str]):
        super().__init__()
        self.model, self.backbone, self.head, self.classes = model, model.backbone, head, classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[B, classes]`` of ``uint8 [B, C, H, W]`` images."""
        self.eval()
        return self(self.model.preprocess(images)).float().softmax(1)


def save_classifier(clf: Classifier, out: str | Path, about: dict, texts: dict[str, str] | None = None) -> Path:
    """Write the folder whole or not at all (:func:`freelabel.files.atomic_folder`); ``about`` goes into
    ``classifier.json``, ``texts`` (name: content) into text files beside it."""
    from ..run import CONFIG

    m = clf.model
    state = {k: v.detach().contiguous().cpu() for k, v in clf.backbone.state_dict().items()}
    info = {
        "classes": clf.classes,
        "source": m.name if m.run_dir is None else None,
        "channels": m.in_chans,
        "image_size": m.decode_size,
        "view": asdict(m.view),
        **about,
    }
    with atomic_folder(out, sum(v.numel() * v.element_size() for v in state.values())) as tmp:
        save_file(state, str(tmp / "backbone.safetensors"))
        save_file({k: v.detach().contiguous().cpu() for k, v in clf.head.state_dict().items()}, str(tmp / HEAD))
        if m.run_dir is not None:
            shutil.copy(m.run_dir / CONFIG, tmp / CONFIG)
        (tmp / INFO).write_text(json.dumps(info, indent=2))
        for name, text in (texts or {}).items():
            (tmp / name).write_text(text)
    return Path(out)


def load_classifier(folder: str | Path, device: torch.device | str | None = None) -> Classifier:
    from ..run import CONFIG
    from .common import load_model

    folder = Path(folder)
    if not (folder / INFO).is_file():
        raise RunError(
            f"{folder} is not a classifier folder (no {INFO}); make one with `freelabel eval finetune` "
            "or `freelabel eval linear`"
        )
    info = json.loads((folder / INFO).read_text())
    model = load_model(folder if (folder / CONFIG).is_file() else info["source"], device=device)
    if info["source"] is not None:  # a pretrained architecture, fine-tuned weights
        model.backbone.load_state_dict(load_file(str(folder / "backbone.safetensors")))
    model = model.at(ViewConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in info["view"].items()}))
    head_state = load_file(str(folder / HEAD))
    head = nn.Linear(head_state["weight"].shape[1], head_state["weight"].shape[0])
    head.load_state_dict(head_state)
    device = next(model.backbone.parameters()).device
    return Classifier(model, head.to(device), info["classes"]).eval()


def predict_folder(
    classifier: str | Path, folder: str | Path, out: str | Path | None = None, k: int = 5, batch_size: int = 64
) -> tuple[list[list], list[str]]:
    """Top-``k`` labels and scores of every image under ``folder``: rows ``[image, label_1, score_1, ...]``
    (paths relative to ``folder``) and the paths that could not be decoded; written as CSV to ``out``."""
    from ..data.loader import sequential
    from ..data.sources import ImageFiles, scan_folder

    if k < 1 or batch_size < 1:
        raise ConfigError(f"-k and the batch size must be at least 1; got {k} and {batch_size}")
    clf = load_classifier(classifier)
    root = Path(folder).expanduser()
    paths = scan_folder(root)[0]
    size = clf.model.decode_size or clf.model.view.size
    ds = ImageFiles(paths, list(range(len(paths))), [], size, clf.model.in_chans)  # labels: row numbers
    k = min(k, len(clf.classes))
    rows, failed = [], []
    for batch in progress(sequential(ds, batch_size), (len(ds) + batch_size - 1) // batch_size, "predict"):
        failed += batch.skipped
        if not len(batch.images):
            continue
        scores, idx = clf.predict(batch.images).topk(k, dim=1)
        for i, s, c in zip(batch.labels.tolist(), scores.tolist(), idx.tolist()):
            row: list = [paths[i].relative_to(root).as_posix()]
            for score, cls in zip(s, c):
                row += [clf.classes[cls], round(score, 6)]
            rows.append(row)
    if not rows:
        raise DataError(f"none of the {len(paths)} images under {root} could be decoded")
    if out is not None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["image"] + [f"{name}_{j}" for j in range(1, k + 1) for name in ("label", "score")])
        writer.writerows(rows)
        write_text(out, buffer.getvalue())
    return rows, failed
