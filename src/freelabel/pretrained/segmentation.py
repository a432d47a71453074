"""Promptable segmenters through Hugging Face transformers: SAM, SAM2 and SAM3.

``load_segmenter(NAME_OR_FOLDER)`` returns a :class:`Segmenter`. SAM and SAM2 segment what points
and boxes point at (:meth:`Segmenter.segment`); SAM3 segments every instance of a concept named in
words (:meth:`Segmenter.segment_text`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import PretrainedError
from .detection import load_parts, to_pil
from .hub import read_config, resolve_device_dtype

CONCEPT = {"sam3": "SAM 3 (Carion et al. 2025), concept prompts", "sam3_video": "SAM 3 checkpoint with its tracker"}


class Segmenter:
    """Masks from prompts. ``kind`` is the transformers model type."""

    def __init__(self, model, processor, kind: str, name: str):
        self.model, self.processor, self.kind, self.name = model, processor, kind, name

    @property
    def reads_text(self) -> bool:
        return self.kind in CONCEPT

    @torch.no_grad()
    def segment(
        self,
        image,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks ``[N, H, W]`` (bool) and predicted-IoU scores ``[N]`` for one image: one object per box
        (``boxes [N, 4]``, xyxy pixels), or one object for the points alone. ``points [P, 2]`` (x, y
        pixels) with ``point_labels [P]`` (1 foreground, 0 background; default all 1) join every box's
        prompt. A single point is ambiguous, so SAM proposes three masks and the best-scored one is kept."""
        if self.reads_text:
            raise PretrainedError(
                f"{self.name} is SAM3, which segments concepts named in text (segment_text); "
                "for point or box prompts use a SAM or SAM2 model"
            )
        if points is None and boxes is None:
            raise PretrainedError("segment needs points or boxes to prompt with")
        pil = to_pil(image)
        kwargs: dict = {}
        n = 1 if boxes is None else len(boxes)
        if boxes is not None:
            if n == 0:
                return torch.zeros(0, pil.height, pil.width, dtype=torch.bool), torch.zeros(0)
            kwargs["input_boxes"] = [torch.as_tensor(boxes, dtype=torch.float32).tolist()]
        if points is not None:
            points = torch.as_tensor(points, dtype=torch.float32).view(-1, 2)
            labels = torch.ones(len(points)) if point_labels is None else torch.as_tensor(point_labels)
            kwargs["input_points"] = [[points.tolist()] * n]
            kwargs["input_labels"] = [[labels.long().tolist()] * n]
        multimask = boxes is None and len(points) == 1
        inputs = self.processor(images=pil, return_tensors="pt", **kwargs)
        model_inputs = {k: v for k, v in inputs.items() if k not in ("original_sizes", "reshaped_input_sizes")}
        out = self.model(**_to(model_inputs, self.model), multimask_output=multimask)
        extra = [inputs["reshaped_input_sizes"]] if "reshaped_input_sizes" in inputs else []
        masks = self.processor.post_process_masks(out.pred_masks.float().cpu(), inputs["original_sizes"], *extra)[0]
        scores = out.iou_scores[0].float().cpu()  # [N, K]
        best = scores.argmax(-1)
        return masks[torch.arange(n), best].bool(), scores[torch.arange(n), best]

    @torch.no_grad()
    def segment_text(
        self, image, phrases: Sequence[str], threshold: float = 0.3, mask_threshold: float = 0.5
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
        """SAM3 concept prompts: every instance of each phrase -> masks ``[N, H, W]`` (bool), boxes
        ``[N, 4]`` (xyxy pixels), scores ``[N]`` and phrase labels. The image is encoded once and each
        phrase decoded against it, all phrases in one batch."""
        if not self.reads_text:
            raise PretrainedError(
                f"{self.name} is a {self.kind} model, which cannot read text; pass a detector "
                "(Grounding DINO or OWLv2) to turn phrases into boxes, or use a SAM3 model"
            )
        phrases = [p.strip() for p in phrases if p.strip()]
        if not phrases:
            raise PretrainedError("segment_text needs at least one text phrase")
        pil = to_pil(image)
        inputs = self.processor(images=pil, text=phrases, return_tensors="pt")
        inputs = _to(inputs, self.model)
        vision = self.model.get_vision_features(pixel_values=inputs["pixel_values"])
        for key, value in vision.items():  # share the one image's features across the phrases
            vision[key] = _expand(value, len(phrases))
        out = self.model(vision_embeds=vision, input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        out = type(out)(**{k: v.float() if isinstance(v, torch.Tensor) else v for k, v in out.items()})
        results = self.processor.post_process_instance_segmentation(
            out,
            threshold=threshold,
            mask_threshold=mask_threshold,
            target_sizes=[(pil.height, pil.width)] * len(phrases),
        )
        labels = [p for p, r in zip(phrases, results) for _ in range(len(r["scores"]))]
        cat = lambda key: torch.cat([r[key].cpu() for r in results])  # noqa: E731
        return cat("masks").bool(), cat("boxes").float(), cat("scores").float(), labels


def _to(inputs, model) -> dict:
    dtype = next(model.parameters()).dtype
    return {
        k: v.to(model.device, dtype if v.is_floating_point() else v.dtype) if isinstance(v, torch.Tensor) else v
        for k, v in inputs.items()
    }


def _expand(value, n: int):
    if isinstance(value, torch.Tensor):
        return value.expand(n, *value.shape[1:])
    if isinstance(value, (tuple, list)):
        return type(value)(_expand(v, n) for v in value)
    return value


def load_segmenter(
    name_or_folder: str, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> Segmenter:
    """A :class:`Segmenter` for a SAM, SAM2 or SAM3 checkpoint (a local folder or a hub name)."""
    from transformers import Sam2Model, Sam3Model, Sam3Processor, SamModel

    kind = read_config(name_or_folder).model_type
    classes = {"sam": SamModel, "sam2": Sam2Model, "sam3": Sam3Model, "sam3_video": Sam3Model}
    if kind not in classes:
        raise PretrainedError(
            f"{name_or_folder!r} is a {kind} model, not a segmenter; segmenters: {', '.join(classes)}"
        )
    device, dtype = resolve_device_dtype(device, dtype)
    processor_class = Sam3Processor if kind in CONCEPT else None  # a sam3_video folder's own is for video
    model, processor = load_parts(name_or_folder, classes[kind], device, dtype, processor_class)
    return Segmenter(model, processor, kind, str(name_or_folder))
