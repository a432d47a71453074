"""k-NN accuracy of the backbone during training, for the curve of accuracy against training time."""

from __future__ import annotations

import logging
import math

import torch

from ..config import RunConfig
from ..data.registry import open_dataset
from ..data.sources import sample
from ..encoder import Encoder
from ..evaluate.knn import knn_eval
from .clock import Position

log = logging.getLogger("freelabel")


SAMPLE = (5_000, 1_000)  # the training and test images a point's k-NN uses: a seeded sample, so it costs seconds


class OnlineKNN:
    """Every ``cfg.eval_every_minutes`` of training time (and once at the end), the k-NN accuracy of
    ``backbone`` on seeded samples of the run's data (:data:`SAMPLE`: ``freelabel eval knn`` scores the
    whole splits); ``curve`` holds the results (a resumed run passes the points it already has, which are
    extended in place). Off where ``enabled`` is false (all processes but the first), without the option,
    or on data without labels."""

    def __init__(
        self,
        cfg: RunConfig,
        backbone: torch.nn.Module,
        train_seconds: float,
        enabled: bool,
        curve: list[dict] | None = None,
    ):
        self.cfg, self.backbone = cfg, backbone
        self.curve: list[dict] = [] if curve is None else curve
        self.interval = (cfg.eval_every_minutes or 0) * 60
        self.data = self._labelled_data() if enabled and self.interval else None
        self.next = (train_seconds // self.interval + 1) * self.interval if self.data else math.inf

    def _labelled_data(self):
        size = self.cfg.data.image_size or self.cfg.views.size
        train, test = open_dataset(self.cfg.data.name, "train", size), open_dataset(self.cfg.data.name, "test", size)
        if not (getattr(train, "classes", None) and getattr(test, "classes", None)):  # shards cannot be indexed
            log.warning("eval_every_minutes ignored: %s has no labels", self.cfg.data.name)
            return None
        return sample(train, SAMPLE[0])[0], sample(test, SAMPLE[1])[0]

    def due(self, run: Position) -> bool:
        return run.train_seconds >= self.next

    def __call__(self, run: Position) -> dict:
        """Evaluate now; the result joins ``curve``."""
        encoder = Encoder("training", self.backbone, self.cfg.views, self.cfg.data.channels or 3)
        acc = knn_eval(encoder, *self.data, workers=self.cfg.data.workers)
        log.info("k-NN at %.1f min (step %d): %s", run.train_seconds / 60, run.step, acc)
        self.curve.append({"minutes": run.train_seconds / 60, "step": run.step, **acc})
        self.next += self.interval
        return self.curve[-1]

    def finish(self, run: Position) -> None:
        """The last point of the curve, at the end of training."""
        if self.data and (not self.curve or self.curve[-1]["step"] != run.step):
            self(run)
