"""Features of an encoder on a split of data, extracted once and kept: k-NN, the linear probe, fine-tuning's
frozen baseline, zero-shot, retrieval, the report and the online k-NN all read them here.

    key = (the encoder's fingerprint, or the pixels at a size; the data; the split and its length; the kind)
    found on disk?  read it                                  # a second protocol, a second command: no model run
    else            one pass over the split, saved           # batches decoded by the loader's workers

A run's trained features are kept in the run (``RUN/features/``); baselines (a random initialisation,
raw pixels) and pretrained models in the user's cache (``~/.cache/freelabel/features``, or
``$FREELABEL_CACHE``), where every run with the same data, backbone and seed finds its random-init
baseline already there: the fingerprint hashes the weights, so equal keys mean equal features.

Kinds: ``pooled``, the backbone's pooled features (what k-NN and the linear probe score); ``embedding``,
the L2-normalised embedding in the model's output space (an image-text model's shared space: zero-shot,
retrieval, the index); ``tokens``, the patch tokens (dense probes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from ..data.loader import sequential
from ..data.sources import cache_dir
from ..data.views import resize
from ..encoder import Encoder
from ..errors import DataError
from ..files import atomic_file, write_json
from ..hardware import loader_workers, resolve_precision

log = logging.getLogger("freelabel")
KINDS = ("pooled", "embedding", "tokens")


@dataclass
class Features:
    """Features ``[N, ...]`` (float32) of the readable images of a split, their labels ``[N]`` and, for
    captioned data, their captions."""

    x: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor  # int64 [N]: each row's item in the split (unreadable items have none)
    texts: list[str] | None = None


@torch.no_grad()
def extract(
    encoder: Encoder | None,
    ds: Dataset,
    kind: str = "pooled",
    size: int | None = None,
    batch_size: int = 256,
    workers: int = 0,
    describe: str = "",
) -> Features:
    """One pass of ``encoder`` over every readable image of ``ds`` (``None``: the pixels in [0, 1] at
    ``size``), in bf16 where the hardware computes in it; unreadable images are left out and counted."""
    from .common import progress

    if kind not in KINDS:
        raise ValueError(f"unknown kind of features {kind!r}; valid: {', '.join(KINDS)}")
    autocast = encoder is not None and resolve_precision("auto", encoder.device.type).startswith("bf16")
    backbone = encoder.backbone if encoder is not None else None
    was_training = backbone is not None and backbone.training
    if backbone is not None and not was_training:  # an evaluation's model, not one being trained: in the
        backbone.to(memory_format=torch.channels_last)  # input's layout (Encoder.preprocess), ~1.3x faster convs
    if backbone is not None:
        backbone.eval()
    xs, labels, index, texts = [], [], [], []
    batches = sequential(ds, batch_size, loader_workers(workers))
    try:
        for batch in progress(batches, -(-len(ds) // batch_size), describe or f"features of {len(ds)} images"):
            if not len(batch.images):  # every image of the batch unreadable
                continue
            if encoder is None:
                x = resize(batch.images, size).flatten(1)
            else:
                with torch.autocast(encoder.device.type, dtype=torch.bfloat16, enabled=autocast):
                    x = {"pooled": encoder.pooled, "embedding": encoder.encode_image, "tokens": encoder.encode_tokens}[
                        kind
                    ](batch.images)
            xs.append(x.float().cpu())
            labels.append(batch.labels)
            index.append(batch.index)
            texts += batch.texts or []
    finally:
        if backbone is not None:
            backbone.train(was_training)
    if not xs:
        raise DataError(
            f"none of the {len(ds)} images could be read"
            if len(ds)
            else "a split of the data holds no images (too few per class for a held-out fifth?); give more images"
        )
    found = Features(torch.cat(xs), torch.cat(labels), torch.cat(index), texts or None)
    if len(found.x) < len(ds):
        log.warning("skipped %d unreadable images of %d", len(ds) - len(found.x), len(ds))
    return found


def cached(
    encoder: Encoder | None, data: str, split: str, n: int, kind: str = "pooled", size: int | None = None
) -> Features | None:
    """The features :func:`features` kept for these arguments, or None when there are none yet."""
    return _read(cache_path(encoder, data, split, n, kind, size))


def features(
    encoder: Encoder | None,
    data: str,
    split: str,
    ds: Dataset,
    kind: str = "pooled",
    size: int | None = None,
    batch_size: int = 256,
    workers: int = 0,
) -> Features:
    """:func:`extract`, read from the cache when these features were extracted before (see the module)."""
    path = cache_path(encoder, data, split, len(ds), kind, size)
    if (found := _read(path)) is not None:
        return found
    made = extract(encoder, ds, kind, size, batch_size, workers, f"{kind} features of {len(ds)} {split} images")
    tensors = {"features": made.x.contiguous(), "labels": made.labels.contiguous(), "index": made.index.contiguous()}
    meta = {"texts": json.dumps(made.texts)} if made.texts else None
    with atomic_file(path, made.x.numel() * 4 + made.labels.numel() * 16) as tmp:
        save_file(tensors, str(tmp), meta)
    if encoder is not None and path.parent == (encoder.run_dir or Path()) / "features":
        for stale in path.parent.glob("*.safetensors"):  # a run's features of weights it no longer has
            if not stale.name.startswith(encoder.fingerprint):
                stale.unlink(missing_ok=True)
    return made


def remembered(what: dict, compute: Callable[[], dict]) -> dict:
    """A baseline's result (a random initialisation's, raw pixels'), kept in the user's cache under all that
    decides it (``what``: the features' key, the data, the protocol's settings), so that another run with
    the same data, backbone and seed reads it instead of computing it again."""
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]
    path = cache_dir() / "results" / f"{digest}.json"
    try:
        return json.loads(path.read_text())["result"]
    except (OSError, ValueError, KeyError):
        pass
    result = compute()
    write_json(path, {"what": what, "result": result})
    return result


def key(encoder: Encoder | None, size: int | None) -> str:
    """What features are made by: the encoder's fingerprint, or the pixels at ``size``."""
    return encoder.fingerprint if encoder is not None else f"pixels{size}"


def cache_path(encoder: Encoder | None, data: str, split: str, n: int, kind: str, size: int | None) -> Path:
    """Where the features of this encoder (``None``: pixels at ``size``) on this split are kept."""
    folder = encoder.run_dir if encoder is not None and encoder.trained and encoder.run_dir else None
    root = folder / "features" if folder else cache_dir() / "features"
    source = str(Path(data).expanduser().resolve()) if Path(data).expanduser().exists() else data
    source = re.sub(r"[^A-Za-z0-9_.-]+", "_", source).strip("_")[-60:]
    return root / f"{key(encoder, size)}-{source}-{split}-{n}-{kind}.safetensors"


def _read(path: Path) -> Features | None:
    """Cached features, or None when there are none (or they cannot be read: they are made again)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            texts = json.loads((f.metadata() or {}).get("texts", "null"))
            return Features(f.get_tensor("features"), f.get_tensor("labels"), f.get_tensor("index"), texts)
    except Exception as e:  # damaged: extracted again, and saved over it
        log.warning("cached features %s cannot be read (%s); extracting them again", path, type(e).__name__)
        return None
