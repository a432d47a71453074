"""Attention maps and object discovery, as in the DINO paper (Caron et al. 2021, section 4.2.1 and figure 3).

The CLS token's attention in the last block, per head, over the patches, is a map of where the model
looks. Keeping the top patches that hold 60% of a head's attention mass gives a mask, scored by its
Jaccard index (intersection over union) with the objects of images with exact masks (the composed
Fashion-MNIST scenes by default). Works for freelabel ViT runs (timm ViTs) and pretrained ViTs
(DINOv2, DINOv3, ViT: anything transformers returns attentions for).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.composed import IGNORE
from ..encoder import Encoder
from ..errors import RunError
from ..files import atomic_file
from . import scalars
from .common import load_model, progress, record, timm_vit
from .dense import dense_model, masked_data


def _hf_vit(model: Encoder):
    hf = getattr(model.backbone, "model", None)
    config = getattr(hf, "config", None)
    return hf if config is not None and isinstance(getattr(config, "patch_size", None), int) else None


def check_vit(model: Encoder) -> None:
    vit = timm_vit(model.backbone)
    if vit is not None and vit.num_prefix_tokens - getattr(vit, "num_reg_tokens", 0) > 0:
        return
    if vit is None and _hf_vit(model) is not None:
        return
    raise RunError(
        f"attention maps need a ViT with a CLS token; {model.name} is not one. They work for ViT runs "
        "(e.g. `freelabel pretrain dinov2 --data fashion-mnist`) and pretrained ViTs (facebook/dinov2-small)"
    )


@torch.no_grad()
def cls_attention(model: Encoder, images: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The last block's attention rows of the CLS token, ``[B, heads, tokens]`` (each row sums to 1 over
    all tokens: CLS, registers, patches), and the number of tokens before the patches."""
    check_vit(model)
    x = model.preprocess(images)
    vit = timm_vit(model.backbone)
    if vit is None:
        hf = _hf_vit(model)
        hf.set_attn_implementation("eager")
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        rows = hf(pixel_values=x, output_attentions=True).attentions[-1][:, :, 0]
        return rows.float(), rows.shape[-1] - (x.shape[-2] // hf.config.patch_size) * (
            x.shape[-1] // hf.config.patch_size
        )
    attn = vit.blocks[-1].attn
    seen: list[torch.Tensor] = []
    hook = attn.attn_drop.register_forward_hook(lambda _m, _i, out: seen.append(out))  # the softmax of q k^T
    fused, attn.fused_attn = attn.fused_attn, False
    try:
        model.backbone(x)
    finally:
        attn.fused_attn = fused
        hook.remove()
    return seen[-1][:, :, 0].float(), vit.num_prefix_tokens


def attention_maps(model: Encoder, images: torch.Tensor) -> torch.Tensor:
    """CLS attention of the last block over the patches, per head: ``[B, heads, h, w]``."""
    rows, prefix = cls_attention(model, images)
    side = math.isqrt(rows.shape[-1] - prefix)
    return rows[..., prefix:].reshape(*rows.shape[:2], side, side)


def mass_mask(maps: torch.Tensor, mass: float = 0.6) -> torch.Tensor:
    """Per map (last two dims), the smallest set of top patches holding ``mass`` of its attention."""
    flat = maps.flatten(-2)
    values, order = flat.sort(-1, descending=True)
    before = values.cumsum(-1) - values  # mass of the patches ranked above each one
    keep = before < mass * flat.sum(-1, keepdim=True)
    return torch.zeros_like(keep).scatter(-1, order, keep).view_as(maps)


def jaccard(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Intersection over union of boolean masks over the last two dims (1 when both are empty)."""
    inter = (pred & target).flatten(-2).sum(-1).float()
    union = (pred | target).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def draw(image: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor, path: Path, zoom: int = 4) -> None:
    """One row: the image, then each head's attention (stretched from its minimum to its maximum) with its
    60%-mass mask below."""
    from PIL import Image

    size = image.shape[-1]
    up = F.interpolate(maps[None], size=(size, size), mode="nearest")[0]
    top = [image[0].numpy()] + [(255 * (m - m.min()) / (m.max() - m.min()).clamp(min=1e-12)).byte().numpy() for m in up]
    bottom = [np.zeros((size, size), np.uint8)] + [(255 * m).byte().numpy() for m in masks]
    grid = np.concatenate([np.concatenate(top, 1), np.concatenate(bottom, 1)], 0)
    with atomic_file(path) as tmp:
        Image.fromarray(grid).resize((grid.shape[1] * zoom, grid.shape[0] * zoom), Image.NEAREST).save(tmp, "PNG")


def evaluate_attention(
    spec: str | Path,
    data: str = "composed",
    out: str | Path | None = None,
    images: int = 8,
    baselines: bool = False,
    mass: float = 0.6,
    batch_size: int = 64,
) -> dict:
    """Jaccard of the DINO-paper attention masks with the objects of the test images of ``data`` (mean over
    heads, and of the best head), written to ``metrics.json`` under ``attention``; the first ``images``
    drawn into ``out`` (default ``RUN/attention``). ``baselines`` adds the random-init backbone."""
    model = load_model(spec)
    check_vit(model)
    _, test = masked_data(model, data)
    objects = (test.masks > 0) & (test.masks != IGNORE)  # class 0 is the background
    folder = Path(out) if out else (model.run_dir / "attention" if model.run_dir else Path("attention"))
    folder.mkdir(parents=True, exist_ok=True)

    def score(m: Encoder, name: str) -> dict:
        m = dense_model(m, test.images.shape[-1])
        per_image = []
        for s in progress(range(0, len(test), batch_size), math.ceil(len(test) / batch_size), "attention"):
            maps = attention_maps(m, test.images[s : s + batch_size]).cpu()
            size = test.images.shape[-1]
            masks = F.interpolate(mass_mask(maps, mass).float(), size=(size, size), mode="nearest").bool()
            per_image.append(jaccard(masks, objects[s : s + batch_size, None]))
            for i in range(s, min(s + batch_size, images)):
                draw(test.images[i], maps[i - s], masks[i - s], folder / f"{name}-{i:03d}.png")
        j = 100 * torch.cat(per_image)  # [images, heads]
        return {
            "jaccard_mean_head": float(j.mean()),
            "jaccard_best_head": float(j.mean(0).max()),
            "jaccard_per_head": [round(float(v), 2) for v in j.mean(0)],
            "grid": list(maps.shape[-2:]),
        }

    results: dict = {
        "data": data,
        "test_images": len(test),
        "mass": mass,
        "images": str(folder),
        "trained": score(model, "trained"),
    }
    if baselines:
        results["random_init"] = score(load_model(spec, trained=False), "random_init")
    record(model, "attention", results)
    return results


def summary(r: dict) -> list[str]:
    return [scalars("attention", r)] + [
        f"  {k:12s} Jaccard {r[k]['jaccard_mean_head']:.2f}% (best head {r[k]['jaccard_best_head']:.2f}%)"
        for k in ("trained", "random_init")
        if k in r
    ]
