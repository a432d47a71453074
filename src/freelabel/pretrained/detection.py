"""Open-vocabulary detectors through Hugging Face transformers: Grounding DINO and OWLv2.

``load_detector(NAME_OR_FOLDER)`` reads the folder's (or hub repo's) config, builds the model class
of its ``model_type`` with its ``AutoProcessor``, and returns a :class:`Detector` whose ``detect``
turns an image and a list of phrases into pixel boxes, scores and phrase labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.ops import box_convert, clip_boxes_to_image

from ..errors import PretrainedError
from .hub import DETECTORS, read_config, resolve_device_dtype


def to_pil(image: torch.Tensor | np.ndarray | Image.Image) -> Image.Image:
    """A PIL RGB image from a PIL image or a ``uint8`` tensor ``[3, H, W]`` (or array ``[H, W, 3]``)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(f"expected a uint8 image [3, H, W], got {image.dtype} {tuple(image.shape)}")
        image = image.permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")


def load_parts(name_or_folder: str, model_class, device, dtype, processor_class=None) -> tuple:
    """``(model, processor)`` from a local folder or a hub name, on ``device`` in ``dtype``, in eval mode."""
    from transformers import AutoProcessor

    try:
        processor = (processor_class or AutoProcessor).from_pretrained(name_or_folder)
        model = model_class.from_pretrained(name_or_folder, dtype=dtype)
    except OSError as e:
        raise PretrainedError(
            f"cannot load {name_or_folder!r} ({str(e).splitlines()[0]}); give a folder written by "
            "save_pretrained (config, weights and processor files) or a hub name"
        ) from None
    return model.to(device).eval(), processor


class Detector:
    """Boxes for text phrases. ``kind`` is the transformers model type."""

    def __init__(self, model, processor, kind: str, name: str):
        self.model, self.processor, self.kind, self.name = model, processor, kind, name

    def detect(
        self, image, phrases: Sequence[str], box_threshold: float = 0.3, text_threshold: float = 0.25
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """One image (``uint8 [3, H, W]`` or PIL) -> boxes ``[N, 4]`` (xyxy pixels, clipped to the image),
        scores ``[N]``, labels (one of ``phrases`` each)."""
        return self.detect_batch([image], phrases, box_threshold, text_threshold)[0]

    @torch.no_grad()
    def detect_batch(
        self, images: Sequence, phrases: Sequence[str], box_threshold: float = 0.3, text_threshold: float = 0.25
    ) -> list[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        """:meth:`detect` for several images in one forward pass.

        Each box takes the phrase that scores highest on it, and that score is the box's. Grounding DINO
        scores a phrase by its best token, so a box is kept when that token passes both ``box_threshold``
        and ``text_threshold``; OWLv2 scores each phrase as a whole, and only ``box_threshold`` applies."""
        phrases = [p.strip() for p in phrases if p.strip()]
        if not phrases:
            raise PretrainedError("detection needs at least one text phrase")
        pils = [to_pil(im) for im in images]
        sizes = [(im.height, im.width) for im in pils]
        if self.kind in ("owlv2", "owlvit"):
            inputs = self.processor(images=pils, text=[list(phrases)] * len(pils), padding=True, return_tensors="pt")
            out = self.model(**self._to_model(inputs))
            results = self.processor.post_process_grounded_object_detection(
                out, threshold=box_threshold, target_sizes=sizes, text_labels=[list(phrases)] * len(pils)
            )
            return [
                (clip_boxes_to_image(r["boxes"].float().cpu(), size), r["scores"].float().cpu(), list(r["text_labels"]))
                for r, size in zip(results, sizes)
            ]
        text, spans = _grounding_text(phrases)
        inputs = self.processor(images=pils, text=[text] * len(pils), return_tensors="pt")
        out = self.model(**self._to_model(inputs))
        token_phrase = _token_phrases(self.processor.tokenizer, text, spans)  # [T, P] bool
        probs = out.logits.float().sigmoid()[..., : token_phrase.shape[0]].cpu()  # [B, Q, T]
        phrase_scores = torch.where(token_phrase, probs.unsqueeze(-1), 0.0).amax(2)  # [B, Q, P]
        results = []
        for b, (h, w) in enumerate(sizes):
            score, label = phrase_scores[b].max(-1)
            keep = score > max(box_threshold, text_threshold)
            boxes = box_convert(out.pred_boxes[b].float().cpu(), "cxcywh", "xyxy") * torch.tensor([w, h, w, h])
            boxes = clip_boxes_to_image(boxes[keep], (h, w))
            results.append((boxes, score[keep], [phrases[i] for i in label[keep].tolist()]))
        return results

    def _to_model(self, inputs) -> dict:
        dtype = next(self.model.parameters()).dtype
        return {k: v.to(self.model.device, dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}


def _grounding_text(phrases: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Grounding DINO's prompt, ``"a cat. a dog."`` (lower case), and each phrase's character span in it."""
    text, spans = "", []
    for p in phrases:
        spans.append((len(text), len(text) + len(p)))
        text += p.lower() + ". "
    return text.strip(), spans


def _token_phrases(tokenizer, text: str, spans: list[tuple[int, int]]) -> torch.Tensor:
    """``[T, P]``: which tokens of ``text`` (special tokens included, so rows match the logits) lie in which phrase."""
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    return torch.tensor([[a < e and s < b and b > a for s, e in spans] for a, b in offsets], dtype=torch.bool)


def load_detector(
    name_or_folder: str, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> Detector:
    """A :class:`Detector` for a Grounding DINO or OWLv2 checkpoint (a local folder or a hub name)."""
    from transformers import AutoModelForZeroShotObjectDetection

    kind = read_config(name_or_folder).model_type
    if kind not in DETECTORS:
        raise PretrainedError(
            f"{name_or_folder!r} is a {kind} model, not a text-prompted detector; detectors: {', '.join(DETECTORS)}"
        )
    device, dtype = resolve_device_dtype(device, dtype)
    model, processor = load_parts(name_or_folder, AutoModelForZeroShotObjectDetection, device, dtype)
    return Detector(model, processor, kind, str(name_or_folder))
