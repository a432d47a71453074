"""Masks as COCO run-length encodings, non-maximum suppression, and overlay pictures.

The RLE is COCO's (and pycocotools'): the mask is read column by column (Fortran order), ``counts``
alternates runs of 0s and 1s starting with 0s, and is stored in the compressed string form of
pycocotools' ``rleToString`` (each count, from the third on, as the difference to the count two
before, written 5 bits per character from ``'0'`` upward, with a continuation bit). Written here in
numpy, so that freelabel needs no compiled extension; the tests check it against pycocotools.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchvision
from PIL import Image


def _runs(mask: np.ndarray) -> list[int]:
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat.size and flat[0] else runs


def _runs_to_string(counts: list[int]) -> str:
    out = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        while True:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr(48 + (c | 0x20 if more else c)))
            if not more:
                break
    return "".join(out)


def _string_to_runs(s: str) -> list[int]:
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        counts.append(x + counts[-2] if len(counts) > 2 else x)
    return counts


def rle_encode(mask: np.ndarray | torch.Tensor) -> dict:
    """A boolean mask ``[H, W]`` -> ``{"size": [H, W], "counts": str}`` (COCO compressed RLE)."""
    mask = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"rle_encode takes one [H, W] mask, got shape {tuple(mask.shape)}")
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": _runs_to_string(_runs(mask))}


def rle_decode(rle: dict) -> np.ndarray:
    """COCO RLE (``counts`` as the compressed string or the uncompressed list of ints) -> bool ``[H, W]``."""
    h, w = rle["size"]
    counts = _string_to_runs(rle["counts"]) if isinstance(rle["counts"], str) else list(rle["counts"])
    if sum(counts) != h * w:
        raise ValueError(f"RLE counts sum to {sum(counts)}, not {h}x{w}={h * w}")
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape((h, w), order="F")


def nms(
    boxes: torch.Tensor, scores: torch.Tensor, labels: Sequence[str] | None = None, iou_threshold: float = 0.5
) -> torch.Tensor:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first. With ``labels``,
    boxes only suppress boxes of the same label (torchvision's ``batched_nms``); without, any box."""
    if labels is None:
        return torchvision.ops.nms(boxes.float(), scores.float(), iou_threshold)
    ids = {name: i for i, name in enumerate(dict.fromkeys(labels))}
    idxs = torch.tensor([ids[name] for name in labels], dtype=torch.long, device=boxes.device)
    return torchvision.ops.batched_nms(boxes.float(), scores.float(), idxs, iou_threshold)


def overlay(
    image: torch.Tensor,
    masks: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
    captions: Sequence[str] | None = None,
    points: torch.Tensor | None = None,
    point_labels: torch.Tensor | None = None,
) -> Image.Image:
    """The image ``uint8 [3, H, W]`` with each mask tinted in its own colour, the boxes drawn with
    their captions, and prompt points marked (foreground green, background red)."""
    n = len(masks) if masks is not None else len(boxes) if boxes is not None else 0
    colours = [tuple(int(255 * c) for c in _hue((i * 0.618034) % 1.0)) for i in range(n)]
    out = image.cpu()
    if masks is not None and len(masks):
        out = torchvision.utils.draw_segmentation_masks(out, masks.cpu().bool(), alpha=0.45, colors=colours)
    if boxes is not None and len(boxes):
        out = torchvision.utils.draw_bounding_boxes(
            out,
            boxes.cpu().float(),
            list(captions) if captions else None,
            colors=colours,
            width=max(1, min(out.shape[1:]) // 200),
        )
    if points is not None and len(points):
        r = max(2, min(out.shape[1:]) // 100)
        fg = torch.ones(len(points), dtype=torch.bool) if point_labels is None else point_labels.cpu() == 1
        for chosen, colour in ((fg, "lime"), (~fg, "red")):
            if chosen.any():
                out = torchvision.utils.draw_keypoints(out, points.cpu().float()[chosen][None], colors=colour, radius=r)
    return Image.fromarray(out.permute(1, 2, 0).numpy())


def _hue(h: float) -> tuple[float, float, float]:
    import colorsys

    return colorsys.hsv_to_rgb(h, 0.85, 1.0)
