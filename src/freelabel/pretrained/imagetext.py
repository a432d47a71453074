"""CLIP, SigLIP and SigLIP2 from transformers as freelabel image-text models.

Each is a backbone (``forward`` gives the image embedding before normalisation, ``forward_tokens`` the
vision tower's patch tokens) with ``encode_text`` (L2-normalised text embeddings in the shared space);
:func:`freelabel.encoder.load_encoder` adds the preprocessing and ``encode_image``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.views import ViewConfig
from ..errors import PretrainedError
from .hub import processor_view

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
TEXT_BATCH = 256


class ImageTextBackbone(nn.Module):
    """A transformers image-text model (``CLIPModel``, ``SiglipModel``, ``Siglip2Model``) and its tokenizer."""

    def __init__(self, model: nn.Module, tokenizer, view: ViewConfig, name: str):
        super().__init__()
        self.model, self.tokenizer, self.view, self.name = model, tokenizer, view, name
        self.kind = model.config.model_type
        cfg = model.config
        self.embed_dim = getattr(cfg, "projection_dim", None) or cfg.vision_config.hidden_size
        self.prefix = 1 if self.kind == "clip" else 0  # CLIP's vision tokens start with CLS; SigLIP has none
        self.patch = cfg.vision_config.patch_size

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _vision(self, x: torch.Tensor):
        x = x.to(self.dtype)
        if self.kind != "siglip2":
            return self.model.get_image_features(pixel_values=x)
        # SigLIP2 (NaFlex) takes patches flattened as (row, column, channel), with their grid shape.
        b, c, h, w = x.shape
        p = self.patch
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), -1)
        shapes = torch.tensor([[h // p, w // p]] * b, device=x.device)
        attend = torch.ones(b, patches.shape[1], dtype=torch.long, device=x.device)  # every patch is real
        return self.model.get_image_features(pixel_values=patches, pixel_attention_mask=attend, spatial_shapes=shapes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (``view``) -> image embeddings ``[B, D]`` (not L2-normalised)."""
        return self._vision(x).pooler_output

    def forward_tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The vision tower's last patch tokens ``[B, N, D_vision]`` (without CLS)."""
        if mask is not None:
            raise PretrainedError("pretrained backbones take no token mask")
        return self._vision(x).last_hidden_state[:, self.prefix :]

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        max_len = self.model.config.text_config.max_position_embeddings
        out = []
        for s in range(0, len(texts), TEXT_BATCH):
            # SigLIP was trained on text padded to a fixed length without an attention mask
            padding = "max_length" if self.kind != "clip" else True
            tok = self.tokenizer(
                list(texts[s : s + TEXT_BATCH]),
                padding=padding,
                truncation=True,
                max_length=max_len,
                return_tensors="pt",
            )
            inputs = {"input_ids": tok["input_ids"].to(device)}
            if self.kind == "clip":
                inputs["attention_mask"] = tok["attention_mask"].to(device)
            out.append(self.model.get_text_features(**inputs).pooler_output.float())
        return F.normalize(torch.cat(out), dim=-1)


def load_image_text(name_or_folder: str | Path, config, device: torch.device, dtype: torch.dtype) -> ImageTextBackbone:
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(name_or_folder), dtype=dtype).to(device).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_folder))
    except (OSError, ValueError, TypeError) as e:
        raise PretrainedError(f"{name_or_folder} has no usable tokenizer ({e}); save one next to the model") from e
    clip = config.model_type == "clip"
    view = processor_view(name_or_folder, config, *((CLIP_MEAN, CLIP_STD) if clip else ((0.5,) * 3, (0.5,) * 3)))
    return ImageTextBackbone(model, tokenizer, view, str(name_or_folder))
