"""Segmentation pipelines over image files, three routes to masks:

- detect-then-segment: text phrases -> detector boxes (Grounding DINO or OWLv2) -> score threshold
  -> per-phrase NMS -> SAM/SAM2 masks prompted by the kept boxes;
- concept prompts: text phrases -> SAM3, which finds and segments every instance in one model;
- promptable: points and/or boxes -> SAM/SAM2 masks.

Each image gives ``NAME.json`` (image size, models, prompts, and per object its label, scores, box
and mask as COCO RLE) and ``NAME.png`` (the image with masks, boxes and labels drawn).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError, PretrainedError
from ..pretrained.detection import Detector, load_detector
from ..pretrained.hub import read_config
from ..pretrained.segmentation import CONCEPT, Segmenter, load_segmenter
from .masks import nms, overlay, rle_encode


def read_image(path: str | Path) -> torch.Tensor:
    """``uint8 [3, H, W]`` RGB from an image file (EXIF orientation applied)."""
    try:
        with Image.open(path) as im:
            return torch.from_numpy(np.array(ImageOps.exif_transpose(im).convert("RGB"))).permute(2, 0, 1).contiguous()
    except FileNotFoundError:
        raise DataError(f"no image at {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot read {path} as an image ({e}); give a PNG, JPEG, WebP or BMP file") from None


def segment(images: Sequence[str | Path], out: str | Path, *, segmenter: str | Segmenter,
            text: Sequence[str] | None = None, detector: str | Detector | None = None,
            points: Sequence[Sequence[float]] | None = None, boxes: Sequence[Sequence[float]] | None = None,
            box_threshold: float = 0.3, text_threshold: float = 0.25, nms_threshold: float = 0.5,
            mask_threshold: float = 0.5, batch_size: int = 4, device: str | None = None,
            dtype: str | None = None) -> list[dict]:  # fmt: skip
    """Segment ``images`` by text (with a ``detector``, or a SAM3 ``segmenter`` alone) or by ``points``
    (``[x, y]`` or ``[x, y, label]``, label 1 foreground / 0 background) and ``boxes`` (``[x0, y0, x1,
    y1]``, one object each), writing one JSON and one overlay PNG per image into ``out``. Models may be
    given loaded or by name. Returns the JSON records."""
    if not images:
        raise DataError("no images given")
    prompted = bool(points) or bool(boxes)
    if bool(text) == prompted:
        raise PretrainedError("give either text phrases (--text), or points/boxes (--points, --boxes) to prompt with")
    pts, point_labels = _points(points)
    if boxes and any(len(b) != 4 for b in boxes):
        raise PretrainedError("a box is X0,Y0,X1,Y1 in pixels")
    paths = [Path(p) for p in images]
    pictures = [read_image(p) for p in paths]  # fail on a bad file before loading any model
    name, kind = (segmenter.name, segmenter.kind) if isinstance(segmenter, Segmenter) else (segmenter, read_config(segmenter).model_type)  # fmt: skip
    if text and detector is None and kind not in CONCEPT:
        raise PretrainedError(f"{name} is a {kind} model, which cannot read text: pass --detector NAME "
                         "(Grounding DINO or OWLv2) to turn the phrases into boxes, or use a SAM3 segmenter")  # fmt: skip
    if prompted and kind in CONCEPT:
        raise PretrainedError(f"{name} is SAM3, prompted by text; for points and boxes use a SAM or SAM2 model")
    if isinstance(detector, str):
        detector = load_detector(detector, device, dtype)
    if not isinstance(segmenter, Segmenter):
        segmenter = load_segmenter(segmenter, device, dtype)
    models = {"segmenter": segmenter.name, **({"detector": detector.name} if detector else {})}
    settings = {"box_threshold": box_threshold, "text_threshold": text_threshold, "nms_threshold": nms_threshold}
    if text and detector:
        found = []
        for i in range(0, len(pictures), batch_size):
            found += detector.detect_batch(pictures[i : i + batch_size], text, box_threshold, text_threshold)
        objects = []
        for picture, (b, s, labels) in zip(pictures, found):
            keep = nms(b, s, labels, nms_threshold)
            b, s, labels = b[keep], s[keep], [labels[i] for i in keep.tolist()]
            masks, mask_scores = segmenter.segment(picture, boxes=b)
            objects.append((masks, b, s, labels, mask_scores))
        prompts = {"text": list(text), **settings}
    elif text:
        objects = []
        for picture in pictures:
            masks, b, s, labels = segmenter.segment_text(picture, text, box_threshold, mask_threshold)
            keep = nms(b, s, labels, nms_threshold)
            objects.append((masks[keep], b[keep], s[keep], [labels[i] for i in keep.tolist()], None))
        prompts = {"text": list(text), "score_threshold": box_threshold, "nms_threshold": nms_threshold}
    else:
        box_t = torch.tensor(boxes, dtype=torch.float32).view(-1, 4) if boxes else None
        objects = []
        for picture in pictures:
            masks, mask_scores = segmenter.segment(picture, pts, point_labels, box_t)
            b = box_t if box_t is not None else _mask_boxes(masks)
            objects.append((masks, b, mask_scores, ["object"] * len(masks), None))
        prompts = {"points": [list(map(float, p)) for p in points or []],
                   "boxes": [list(map(float, b)) for b in boxes or []]}  # fmt: skip
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for path, picture, (masks, b, s, labels, mask_scores) in zip(paths, pictures, objects):
        objs = [{"label": labels[i], "score": round(float(s[i]), 4), "box": [round(float(x), 2) for x in b[i]],
                 **({"mask_score": round(float(mask_scores[i]), 4)} if mask_scores is not None else {}),
                 "mask": rle_encode(masks[i])} for i in range(len(labels))]  # fmt: skip
        record = {"image": str(path), "size": list(picture.shape[1:]), "models": models, "prompts": prompts,
                  "objects": objs}  # fmt: skip
        stem = _unique_stem(path, paths)
        captions = [f"{label} {float(score):.2f}" for label, score in zip(labels, s)]
        _atomic_write(out / f"{stem}.json", json.dumps(record, indent=1).encode())
        png = io.BytesIO()
        overlay(picture, masks, b, captions, pts, point_labels).save(png, format="PNG")
        _atomic_write(out / f"{stem}.png", png.getvalue())
        records.append(record)
    return records


def _points(points: Sequence[Sequence[float]] | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``[x, y]`` or ``[x, y, label]`` rows -> points ``[P, 2]`` and labels ``[P]`` (default 1)."""
    if not points:
        return None, None
    if any(len(p) not in (2, 3) for p in points):
        raise PretrainedError("a point is X,Y or X,Y,LABEL (LABEL 1 for foreground, 0 for background)")
    xy = torch.tensor([list(p[:2]) for p in points], dtype=torch.float32)
    return xy, torch.tensor([int(p[2]) if len(p) == 3 else 1 for p in points])


def _mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes of masks (zeros for an empty mask)."""
    from torchvision.ops import masks_to_boxes

    boxes = torch.zeros(len(masks), 4)
    nonempty = masks.flatten(1).any(1)
    if nonempty.any():
        boxes[nonempty] = masks_to_boxes(masks[nonempty]) + torch.tensor([0, 0, 1, 1])
    return boxes


def _unique_stem(path: Path, paths: list[Path]) -> str:
    same = [p for p in paths if p.stem == path.stem]
    return path.stem if len(same) == 1 else f"{path.stem}-{same.index(path)}"


def _atomic_write(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
