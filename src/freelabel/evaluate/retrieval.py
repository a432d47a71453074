"""Image-caption retrieval and CLIPScore for image-text models (:func:`freelabel.encoder.load_encoder`).

Retrieval: each image looks for its caption among all captions of the set (image -> text) and each
caption for its image (text -> image), by cosine similarity; recall@k is the share of queries with a
right answer among their k nearest. Identical captions of different images all count as right.

CLIPScore (Hessel et al. 2021): ``w * max(cos(image, caption), 0)`` with ``w = 2.5``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import DataError
from .features import features
from .zeroshot import model_and_data, record_metrics


def recall_at_k(
    images: torch.Tensor, texts: torch.Tensor, captions: Sequence[str], ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@k (%) both ways for normalised embeddings ``images [N, D]`` and ``texts [N, D]`` of N
    pairs (row i of each is pair i), with chance (k / N) next to them."""
    first = {c: i for i, c in reversed(list(enumerate(captions)))}
    ids = torch.tensor([first[c] for c in captions])
    right = ids[:, None] == ids[None, :]  # [N, N]: caption j is right for image i
    sim = images.float() @ texts.float().T
    out: dict[str, float] = {}
    for name, s in (("image_to_text", sim), ("text_to_image", sim.T)):
        top = s.topk(min(max(ks), len(ids)), dim=1).indices
        hits = right.gather(1, top)
        for k in ks:
            out[f"{name}_r{k}"] = 100.0 * hits[:, :k].any(1).float().mean().item()
    out.update({f"chance_r{k}": 100.0 * min(k, len(ids)) / len(ids) for k in ks})
    return out


def clip_score(images: torch.Tensor, texts: torch.Tensor, w: float = 2.5) -> torch.Tensor:
    """CLIPScore ``[N]`` of normalised image embeddings ``[N, D]`` with their captions' ``[N, D]``."""
    return w * (images.float() * texts.float()).sum(-1).clamp(min=0)


@torch.no_grad()
def evaluate_retrieval(
    spec: str | Path,
    data: str | None = None,
    ks: tuple[int, ...] = (1, 5, 10),
    batch_size: int = 256,
    weights: str | Path | None = None,
) -> dict:
    """Retrieval recall@k both ways and the mean CLIPScore of the true pairs on the test split of
    caption data ``data`` (default: a run's own data); written to a run's ``metrics.json`` under
    ``retrieval``."""
    model, name, ds = model_and_data(spec, data, "test", weights)
    found = features(model, name, "test", ds, kind="embedding", batch_size=batch_size)
    images, captions = found.x, found.texts
    if not captions:
        raise DataError(
            f"retrieval needs captions, and {name} has none: give caption data (emoji-captions, CSV/JSONL, ...)"
        )
    texts = torch.cat(
        [model.encode_text(captions[s : s + batch_size]).float().cpu() for s in range(0, len(captions), batch_size)]
    )
    results = {
        "data": name,
        "pairs": len(captions),
        **recall_at_k(images, texts, captions, ks),
        "clip_score": clip_score(images, texts).mean().item(),
    }
    record_metrics(model, "retrieval", name, results)
    return results


def summary(results: dict) -> list[str]:
    """The results as JSON."""
    import json

    return [json.dumps(results, indent=2)]
