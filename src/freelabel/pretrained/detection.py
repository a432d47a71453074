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

DETECTORS = {"grounding-dino": "Grounding DINO (Liu et al. 2023)", "mm-grounding-dino": "MM Grounding DINO",
             "owlv2": "OWLv2 (Minderer et al. 2023)", "owlvit": "OWL-ViT (Minderer et al. 2022)"}  # fmt: skip


class ModelError(ValueError):
    """A model that cannot be loaded, or that does not fit the task it was given."""


def to_pil(image: torch.Tensor | np.ndarray | Image.Image) -> Image.Image:
    """A PIL RGB image from a PIL image or a ``uint8`` tensor ``[3, H, W]`` (or array ``[H, W, 3]``)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(f"expected a uint8 image [3, H, W], got {image.dtype} {tuple(image.shape)}")
        image = image.permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")


def default_device_dtype(device: str | torch.device | None, dtype: str | torch.dtype | None) -> tuple[torch.device, torch.dtype]:  # fmt: skip
    """CUDA when there is one; bf16 on GPU and fp32 on CPU unless told otherwise."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(dtype, str):
        dtype = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
                 "fp16": torch.float16, "float16": torch.float16}.get(dtype)  # fmt: skip
        if dtype is None:
            raise ModelError("dtype must be one of fp32, bf16, fp16")
    return device, dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)


def load_parts(name_or_folder: str, model_class, device, dtype, processor_class=None) -> tuple:
    """``(model, processor)`` from a local folder or a hub name, on ``device`` in ``dtype``, in eval mode."""
    from transformers import AutoProcessor

    try:
        processor = (processor_class or AutoProcessor).from_pretrained(name_or_folder)
        model = model_class.from_pretrained(name_or_folder, dtype=dtype)
    except OSError as e:
        raise ModelError(f"cannot load {name_or_folder!r} ({str(e).splitlines()[0]}); give a folder written by "
                         "save_pretrained (config, weights and processor files) or a hub name") from None  # fmt: skip
    return model.to(device).eval(), processor


def model_type(name_or_folder: str) -> str:
    """The transformers ``model_type`` in the config of a folder or hub name."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_folder).model_type
    except (OSError, ValueError) as e:
        first_line = str(e).splitlines()[0]
        raise ModelError(f"cannot read a transformers config from {name_or_folder!r}: {first_line}") from None


class Detector:
    """Boxes for text phrases. ``kind`` is the transformers model type."""

    def __init__(self, model, processor, kind: str, name: str):
        self.model, self.processor, self.kind, self.name = model, processor, kind, name

    def detect(self, image, phrases: Sequence[str], box_threshold: float = 0.3,
               text_threshold: float = 0.25) -> tuple[torch.Tensor, torch.Tensor, list[str]]:  # fmt: skip
        """One image (``uint8 [3, H, W]`` or PIL) -> boxes ``[N, 4]`` (xyxy pixels, clipped to the image),
        scores ``[N]``, labels (one of ``phrases`` each)."""
        return self.detect_batch([image], phrases, box_threshold, text_threshold)[0]

    @torch.no_grad()
    def detect_batch(self, images: Sequence, phrases: Sequence[str], box_threshold: float = 0.3,
                     text_threshold: float = 0.25) -> list[tuple[torch.Tensor, torch.Tensor, list[str]]]:  # fmt: skip
        """:meth:`detect` for several images in one forward pass.

        Each box takes the phrase that scores highest on it, and that score is the box's. Grounding DINO
        scores a phrase by its best token, so a box is kept when that token passes both ``box_threshold``
        and ``text_threshold``; OWLv2 scores each phrase as a whole, and only ``box_threshold`` applies."""
        phrases = [p.strip() for p in phrases if p.strip()]
        if not phrases:
            raise ModelError("detection needs at least one text phrase")
        pils = [to_pil(im) for im in images]
        sizes = [(im.height, im.width) for im in pils]
        if self.kind in ("owlv2", "owlvit"):
            inputs = self.processor(images=pils, text=[list(phrases)] * len(pils), padding=True, return_tensors="pt")
            out = self.model(**self._to_model(inputs))
            results = self.processor.post_process_grounded_object_detection(
                out, threshold=box_threshold, target_sizes=sizes, text_labels=[list(phrases)] * len(pils))  # fmt: skip
            return [(clip_boxes_to_image(r["boxes"].float().cpu(), size), r["scores"].float().cpu(), list(r["text_labels"]))
                    for r, size in zip(results, sizes)]  # fmt: skip
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


def load_detector(name_or_folder: str, device: str | torch.device | None = None,
                  dtype: str | torch.dtype | None = None) -> Detector:  # fmt: skip
    """A :class:`Detector` for a Grounding DINO or OWLv2 checkpoint (a local folder or a hub name)."""
    from transformers import AutoModelForZeroShotObjectDetection

    kind = model_type(name_or_folder)
    if kind not in DETECTORS:
        raise ModelError(f"{name_or_folder!r} is a {kind} model, not a text-prompted detector; "
                         f"detectors: {', '.join(DETECTORS)}")  # fmt: skip
    device, dtype = default_device_dtype(device, dtype)
    model, processor = load_parts(name_or_folder, AutoModelForZeroShotObjectDetection, device, dtype)
    return Detector(model, processor, kind, str(name_or_folder))
