"""Zero-shot classification by class names (Radford et al. 2021): each class is the mean of its
prompts' text embeddings (a prompt ensemble, averaged in embedding space), and an image takes the
class whose embedding it is most similar to.

Any image-text model works, freelabel's own CLIP/SigLIP runs and pretrained ones loaded through
transformers alike, as long as it has the two methods of :class:`ImageTextModel`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F


class ImageTextModel(Protocol):
    """An image tower and a text tower into one embedding space."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images ``[B, C, H, W]`` (any size; the model resizes and normalises) -> L2-normalised
        embeddings ``[B, D]``."""
        ...

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> L2-normalised embeddings ``[T, D]``."""
        ...


# A short ensemble in the spirit of CLIP's ImageNet prompts; "{}" is the class name.
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "a close-up photo of a {}.",
    "a low resolution photo of a {}.",
    "an emoji of a {}.",
    "{}",
)


@torch.no_grad()
def class_embeddings(model: ImageTextModel, names: Sequence[str], templates: Sequence[str] = TEMPLATES) -> torch.Tensor:
    """``[C, D]``: for each class name, the L2-normalised mean of its prompts' normalised text embeddings."""
    if not names:
        raise ValueError("zero-shot classification needs at least one class name")
    prompts = [t.format(n) for n in names for t in templates]
    text = F.normalize(model.encode_text(prompts).float(), dim=-1).view(len(names), len(templates), -1)
    return F.normalize(text.mean(1), dim=-1)


@torch.no_grad()
def zeroshot_logits(model: ImageTextModel, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``[B, C]`` of each image to each class embedding of :func:`class_embeddings`."""
    return F.normalize(model.encode_image(images).float(), dim=-1) @ classes.T
