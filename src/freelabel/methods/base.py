"""What every method is: an ``nn.Module`` holding a backbone, naming the views it needs, and
turning a batch into a loss. Methods know no trainer; the engine knows no method by name."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..backbones import build_backbone
from ..data.loader import Batch, MaskMaker
from ..data.views import ViewConfig


class Method(nn.Module):
    """Base of all methods.

    Subclasses set ``backbone`` and ``views`` (one :class:`ViewConfig` per view the engine must
    make from each image) and implement :meth:`training_step`. A method that hides patches sets
    ``masks`` to a mask maker (:mod:`freelabel.data.masking`), which the loader calls for every batch.
    The engine calls the module with a :class:`~freelabel.data.loader.Batch` (``views``: one float
    tensor per view config; ``masks``: what the mask maker made; ``texts``: the captions of caption
    data); around it, the hooks below with the run's progress (0 to 1).
    """

    backbone: nn.Module
    views: list[ViewConfig]
    masks: MaskMaker | None = None
    health_scalars: tuple[str, ...] = ()  # outputs of training_step that tell of collapse (train/health.py)
    collapse_advice = (
        "the usual fixes are a lower --lr, a larger --batch-size, or a longer warm-up (--set optim.warmup=0.1)"
    )

    @classmethod
    def make_backbone(cls, name: str, in_chans: int, views: ViewConfig, **args) -> nn.Module:
        """The backbone this method trains, taking the evaluation view of the data (``normalise(images,
        views)``). The engine and ``load_backbone`` both build it here, so trained weights always fit;
        a method whose backbone sees only part of the image (colorization: lightness) wraps it."""
        return build_backbone(name, in_chans, views.size, **args)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Return ``{"loss": scalar, ...other scalars to log}``."""
        raise NotImplementedError

    def on_step(self, progress: float) -> None:
        """Before the step: per-step schedules (EMA momentum, temperatures)."""

    def after_backward(self, progress: float) -> None:
        """Between backward and the optimiser step: edit gradients (DINO freezes its last layer)."""

    def after_step(self, progress: float) -> None:
        """After the optimiser step: update momentum encoders and teachers."""

    def artefacts(self, batch: Batch) -> dict[str, bytes]:
        """After training, with the last batch: files to keep in the run directory, by name."""
        return {}

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.training_step(batch)
