"""Segmentation pipelines over image files, three routes to masks:

- detect-then-segment: text phrases -> detector boxes (Grounding DINO or OWLv2) -> score threshold
  -> per-phrase NMS -> SAM/SAM2 masks prompted by the kept boxes;
- concept prompts: text phrases -> SAM3, which finds and segments every instance in one model;
- promptable: points and/or boxes -> SAM/SAM2 masks.

:func:`segment` writes, per image, ``NAME.json`` and an overlay; :func:`label_folder` writes one COCO
instances file for a whole folder (the auto-labelling that text-prompted segmentation is for).

Each image of :func:`segment` gives ``NAME.json`` (image size, models, prompts, and per object its label, scores, box
and mask as COCO RLE) and ``NAME.png`` (the image with masks, boxes and labels drawn).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from ..data.images import BadImage, decode
from ..errors import DataError, PretrainedError
from ..files import Journal, write_bytes, write_text
from ..pretrained.detection import Detector, load_detector
from ..pretrained.hub import read_config
from ..pretrained.segmentation import CONCEPT, Segmenter, load_segmenter
from .masks import nms, overlay, rle_encode

log = logging.getLogger("freelabel")


def read_image(path: str | Path) -> torch.Tensor:
    """``uint8 [3, H, W]`` RGB from an image file (EXIF orientation applied), read within the size
    limits of :mod:`freelabel.data.images`."""
    if not Path(path).exists():
        raise DataError(f"no image at {path}")
    try:
        return decode(path)
    except BadImage as e:
        raise DataError(f"cannot read {path} as an image ({e}); give a PNG, JPEG, WebP or BMP file") from None


def segment(
    images: Sequence[str | Path],
    out: str | Path,
    *,
    segmenter: str | Segmenter,
    text: Sequence[str] | None = None,
    detector: str | Detector | None = None,
    points: Sequence[Sequence[float]] | None = None,
    boxes: Sequence[Sequence[float]] | None = None,
    box_threshold: float = 0.3,
    text_threshold: float = 0.25,
    nms_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    batch_size: int = 4,
    device: str | None = None,
    dtype: str | None = None,
) -> list[dict]:
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
    paths, pictures, unreadable = [], [], []
    for p in map(Path, images):  # read every image before loading any model; skip (and count) unreadable ones
        try:
            pictures.append(read_image(p))
            paths.append(p)
        except DataError as e:
            unreadable.append(str(e))
    if not pictures:
        raise DataError(
            unreadable[0]
            if len(unreadable) == 1
            else f"none of the {len(images)} images could be read: {unreadable[0]}"
        )
    if unreadable:
        log.warning("skipped %d unreadable images of %d, e.g. %s", len(unreadable), len(images), unreadable[0])
    _check_segmenter(segmenter, detector, bool(text))
    detector, segmenter = _load(segmenter, detector, device, dtype)
    models = {"segmenter": segmenter.name, **({"detector": detector.name} if detector else {})}
    settings = {"box_threshold": box_threshold, "text_threshold": text_threshold, "nms_threshold": nms_threshold}
    if text:
        objects = _by_text(
            pictures,
            text,
            detector,
            segmenter,
            box_threshold,
            text_threshold,
            nms_threshold,
            mask_threshold,
            batch_size,
        )
        prompts = (
            {"text": list(text), **settings}
            if detector
            else {"text": list(text), "score_threshold": box_threshold, "nms_threshold": nms_threshold}
        )
    else:
        box_t = torch.tensor(boxes, dtype=torch.float32).view(-1, 4) if boxes else None
        objects = []
        for picture in pictures:
            masks, mask_scores = segmenter.segment(picture, pts, point_labels, box_t)
            b = box_t if box_t is not None else _mask_boxes(masks)
            objects.append((masks, b, mask_scores, ["object"] * len(masks), None))
        prompts = {
            "points": [list(map(float, p)) for p in points or []],
            "boxes": [list(map(float, b)) for b in boxes or []],
        }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for path, picture, (masks, b, s, labels, mask_scores) in zip(paths, pictures, objects):
        objs = [
            {
                "label": labels[i],
                "score": round(float(s[i]), 4),
                "box": [round(float(x), 2) for x in b[i]],
                **({"mask_score": round(float(mask_scores[i]), 4)} if mask_scores is not None else {}),
                "mask": rle_encode(masks[i]),
            }
            for i in range(len(labels))
        ]
        record = {
            "image": str(path),
            "size": list(picture.shape[1:]),
            "models": models,
            "prompts": prompts,
            "objects": objs,
        }
        stem = _unique_stem(path, paths)
        captions = [f"{label} {float(score):.2f}" for label, score in zip(labels, s)]
        write_text(out / f"{stem}.json", json.dumps(record, indent=1))
        png = io.BytesIO()
        overlay(picture, masks, b, captions, pts, point_labels).save(png, format="PNG")
        write_bytes(out / f"{stem}.png", png.getvalue())
        records.append(record)
    return records


def _check_segmenter(segmenter: str | Segmenter, detector: str | Detector | None, by_text: bool) -> None:
    """Refuse a segmenter that cannot take the prompts given, before any model is loaded."""
    name, kind = (
        (segmenter.name, segmenter.kind)
        if isinstance(segmenter, Segmenter)
        else (segmenter, read_config(segmenter).model_type)
    )
    if by_text and detector is None and kind not in CONCEPT:
        raise PretrainedError(
            f"{name} is a {kind} model, which cannot read text: pass --detector NAME "
            "(Grounding DINO or OWLv2) to turn the phrases into boxes, or use a SAM3 segmenter"
        )
    if not by_text and kind in CONCEPT:
        raise PretrainedError(f"{name} is SAM3, prompted by text; for points and boxes use a SAM or SAM2 model")


def _load(
    segmenter: str | Segmenter, detector: str | Detector | None, device: str | None, dtype: str | None
) -> tuple[Detector | None, Segmenter]:
    if isinstance(detector, str):
        detector = load_detector(detector, device, dtype)
    if not isinstance(segmenter, Segmenter):
        segmenter = load_segmenter(segmenter, device, dtype)
    return detector, segmenter


def _by_text(
    pictures: Sequence[torch.Tensor],
    text: Sequence[str],
    detector: Detector | None,
    segmenter: Segmenter,
    box_threshold: float,
    text_threshold: float,
    nms_threshold: float,
    mask_threshold: float,
    batch_size: int,
) -> list[tuple]:
    """Per picture ``(masks, boxes, scores, labels, mask scores or None)`` of the objects the phrases
    name: detector boxes (batched) prompting the segmenter, or a SAM3 segmenter alone; NMS per label."""
    objects = []
    if detector:
        found = []
        for i in range(0, len(pictures), batch_size):
            found += detector.detect_batch(pictures[i : i + batch_size], text, box_threshold, text_threshold)
        for picture, (b, s, labels) in zip(pictures, found):
            keep = nms(b, s, labels, nms_threshold)
            b, s, labels = b[keep], s[keep], [labels[i] for i in keep.tolist()]
            masks, mask_scores = segmenter.segment(picture, boxes=b)
            objects.append((masks, b, s, labels, mask_scores))
        return objects
    for picture in pictures:
        masks, b, s, labels = segmenter.segment_text(picture, text, box_threshold, mask_threshold)
        keep = nms(b, s, labels, nms_threshold)
        objects.append((masks[keep], b[keep], s[keep], [labels[i] for i in keep.tolist()], None))
    return objects


def label_folder(
    images: Sequence[str | Path],
    coco: str | Path,
    *,
    segmenter: str | Segmenter,
    text: Sequence[str],
    detector: str | Detector | None = None,
    box_threshold: float = 0.3,
    text_threshold: float = 0.25,
    nms_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    batch_size: int = 4,
    device: str | None = None,
    dtype: str | None = None,
) -> dict:
    """Label every image of ``images`` (files, or folders searched for images) by the text phrases and
    write one COCO instances file ``coco``: the images, one category per phrase, and per object its
    box, mask (RLE), area and score. Resumable: each batch's results are appended to ``coco.partial``
    as they are made, a rerun skips the images already there, and ``coco`` appears (atomically) once
    every image is done. Unreadable images are listed in the result and left out. Returns a summary."""
    from ..data.sources import IMAGE_EXTENSIONS

    if not text:
        raise PretrainedError("--coco labels images by text: give the phrases with --text")
    if len(set(text)) != len(text):
        raise PretrainedError(f"the phrases must differ, got {', '.join(text)}")
    files: list[tuple[Path, str]] = []  # (path, file_name in the COCO file)
    for item in map(Path, images):
        if item.is_dir():
            found = sorted(
                p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
            )
            files += [(p, p.relative_to(item).as_posix()) for p in found]
        elif item.is_file():
            files.append((item, item.name))
        else:
            raise DataError(f"no image or folder at {item}")
    if not files:
        raise DataError(f"no images ({'/'.join(IMAGE_EXTENSIONS)}) found in {', '.join(map(str, images))}")
    coco, partial = Path(coco), Journal(f"{coco}.partial")
    coco.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "text": list(text),
        "box_threshold": box_threshold,
        "text_threshold": text_threshold,
        "nms_threshold": nms_threshold,
    }
    done = _read_partial(partial, settings)
    todo = [(p, name) for p, name in files if name not in done]
    if todo:
        _check_segmenter(segmenter, detector, True)
        detector, segmenter = _load(segmenter, detector, device, dtype)
        if not partial.path.is_file() or not partial.path.stat().st_size:
            partial.append([{"settings": settings}])
        for s in range(0, len(todo), batch_size):
            chunk, pictures, lines = todo[s : s + batch_size], [], []
            for path, name in chunk:
                try:
                    pictures.append(read_image(path))
                except DataError:
                    lines.append({"file_name": name, "unreadable": True})
            readable = [name for (path, name) in chunk if name not in {x["file_name"] for x in lines}]
            found = (
                _by_text(
                    pictures,
                    text,
                    detector,
                    segmenter,
                    box_threshold,
                    text_threshold,
                    nms_threshold,
                    mask_threshold,
                    batch_size,
                )
                if pictures
                else []
            )
            for name, picture, (masks, b, sc, labels, _) in zip(readable, pictures, found):
                objs = [
                    {
                        "label": labels[i],
                        "score": round(float(sc[i]), 4),
                        "box": [round(float(x), 2) for x in b[i]],
                        "mask": rle_encode(masks[i]),
                        "area": int(masks[i].sum()),
                    }
                    for i in range(len(labels))
                ]
                lines.append(
                    {"file_name": name, "height": picture.shape[1], "width": picture.shape[2], "objects": objs}
                )
            partial.append(lines)
            done.update({x["file_name"]: x for x in lines})
    models = {
        "segmenter": getattr(segmenter, "name", segmenter),
        **({"detector": getattr(detector, "name", detector)} if detector else {}),
    }
    result = _coco(files, done, list(text), models, settings)
    write_text(coco, json.dumps(result))
    partial.delete()
    unreadable = [name for _, name in files if done[name].get("unreadable")]
    return {
        "images": len(result["images"]),
        "annotations": len(result["annotations"]),
        "unreadable": unreadable,
        "resumed": len(files) - len(todo),
        "coco": str(coco),
    }


def _read_partial(partial: Journal, settings: dict) -> dict[str, dict]:
    """The images a stopped run already labelled, by file name (a torn last line is cut off)."""
    done: dict[str, dict] = {}
    for i, x in enumerate(partial.read()):
        if i == 0 and (not isinstance(x, dict) or x.get("settings") != settings):
            raise PretrainedError(
                f"{partial.path} holds a run with other settings ({x.get('settings') if isinstance(x, dict) else x}); "
                "delete it to start again"
            )
        if isinstance(x, dict) and "file_name" in x:
            done[x["file_name"]] = x
    return done


def _coco(
    files: list[tuple[Path, str]], done: dict[str, dict], phrases: list[str], models: dict, settings: dict
) -> dict:
    """The COCO instances dictionary: images in file order, ids from 1, boxes as ``[x, y, w, h]``."""
    category = {p: i + 1 for i, p in enumerate(phrases)}
    images, annotations = [], []
    for _, name in files:
        x = done[name]
        if x.get("unreadable"):
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": name, "height": x["height"], "width": x["width"]})
        for o in x["objects"]:
            x0, y0, x1, y1 = o["box"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category[o["label"]],
                    "bbox": [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],
                    "area": o["area"],
                    "segmentation": o["mask"],
                    "score": o["score"],
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": "labelled by freelabel segment", "models": models, "prompts": settings},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": p, "supercategory": "object"} for p, i in category.items()],
    }


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
