"""While a run trains, outside its budget's time: how good and how healthy its backbone is.

    every eval_every minutes of training (or, without it, at each fifth of the run where the checks, this
    one included, stay under a tenth of the training time), and at the end:
        x = the backbone's embeddings of a seeded sample of training images      # no labels needed
        health = effective rank and spread of x, and the method's own signs    # .health: collapse?
        with --eval-every and labels: k-NN top-1 of a test sample against x    # the curve against time

The samples (:data:`SAMPLE`) keep a point to seconds; ``freelabel eval knn`` scores the whole splits.
"""

from __future__ import annotations

import logging
import math
import time

from torch.utils.data import Dataset, IterableDataset

from ..config import RunConfig
from ..data.registry import open_dataset
from ..data.sources import sample
from ..encoder import Encoder
from ..evaluate.features import extract
from ..evaluate.knn import knn_scores
from ..methods import Method
from .clock import Position
from .health import collapsed, embedding_health, warning

log = logging.getLogger("freelabel")

SAMPLE = (5_000, 1_000)  # the training and test images of a k-NN point: a seeded sample, so it costs seconds
HEALTH_SAMPLE = 512  # the training images of a health check without k-NN (RankMe wants at least D of them)
CHECKS = 5  # health checks in a run without --eval-every: at each fifth...
SHARE = 0.1  # ...where they stay under this share of the training time (a run of seconds: the last one only),
FIRST_COST = 5.0  # counting a check as costing what the last one did (seconds; this, before the first)


class OnlineEval:
    """The points of a run so far: ``curve`` (k-NN) and ``health``, extended in place (a resumed run passes
    those it has). Off where ``enabled`` is false (all processes but the first) and on data that cannot be
    sampled (shards); k-NN needs ``--eval-every`` and labels."""

    def __init__(
        self,
        cfg: RunConfig,
        method: Method,
        train: Dataset,
        train_seconds: float,
        enabled: bool,
        curve: list[dict],
        health: list[dict],
    ):
        self.cfg, self.method, self.curve, self.health = cfg, method, curve, health
        self.interval = (cfg.eval_every_minutes or 0) * 60
        self.data = self._data(train) if enabled else None
        self.next_seconds = (train_seconds // self.interval + 1) * self.interval if self.interval else math.inf
        self.next_fraction = (len(health) + 1) / CHECKS if not self.interval else math.inf
        self.warned = any(collapsed(h) for h in health)
        self.spent, self.cost = 0.0, FIRST_COST  # seconds the checks of this process took; the last one's

    def _data(self, train: Dataset):
        """A sample of the ``train`` images, and of the test images where k-NN is asked for and possible."""
        size, name = self.cfg.data.image_size or self.cfg.views.size, self.cfg.data.name
        if isinstance(train, IterableDataset):  # shards are streamed, not sampled
            if self.interval:
                log.warning("eval_every_minutes ignored: %s is streamed shards, which cannot be sampled", name)
            return None
        test = open_dataset(name, "test", size) if self.interval else None
        if test is not None and not (getattr(train, "classes", None) and getattr(test, "classes", None)):
            log.warning("no online k-NN: %s has no labels; the health checks go on", name)
            test = None
        n = SAMPLE[0] if test is not None else HEALTH_SAMPLE
        return sample(train, n)[0], (sample(test, SAMPLE[1])[0] if test is not None else None)

    def due(self, run: Position, progress: float) -> bool:
        cheap = self.spent + self.cost <= SHARE * run.train_seconds
        return self.data is not None and (
            run.train_seconds >= self.next_seconds or (progress >= self.next_fraction and cheap)
        )

    def __call__(self, run: Position, scalars: dict[str, float], progress: float) -> dict[str, float]:
        """Evaluate now (``scalars``: the method's last logged outputs; ``progress``: the share of the run
        done); what to show on TensorBoard."""
        started = time.perf_counter()
        train_sample, test_sample = self.data
        encoder = Encoder("training", self.method.backbone, self.cfg.views, self.cfg.data.channels or 3)
        workers = self.cfg.data.workers if test_sample is not None else 0  # a health check: too few to spawn for
        train = extract(encoder, train_sample, workers=workers, describe="online evaluation: training images")
        health = embedding_health(train.x) | {k: scalars[k] for k in self.method.health_scalars if k in scalars}
        self.health.append({"minutes": run.train_seconds / 60, "step": run.step, **health})
        shown = {f"health/{k}": v for k, v in health.items() if k != "rank_of"}
        if collapsed(health) and not self.warned:
            log.warning(warning(health, run.step, self.method.collapse_advice))
            self.warned = True
        if test_sample is not None and run.train_seconds >= self.next_seconds:
            test = extract(encoder, test_sample, workers=workers, describe="online k-NN: test images")
            acc = knn_scores(train, test)
            log.info("k-NN at %.1f min (step %d): %s", run.train_seconds / 60, run.step, acc)
            self.curve.append({"minutes": run.train_seconds / 60, "step": run.step, **acc})
            shown["knn/top1_k20"] = acc["top1_k20"]
        while self.interval and self.next_seconds <= run.train_seconds:
            self.next_seconds += self.interval
        self.next_fraction = (math.floor(progress * CHECKS) + 1) / CHECKS if not self.interval else math.inf
        self.cost = time.perf_counter() - started
        self.spent += self.cost
        return shown

    def finish(self, run: Position, scalars: dict[str, float]) -> dict[str, float]:
        """The last point, at the end of training (unless one was just taken)."""
        if self.data is None or (self.health and self.health[-1]["step"] == run.step):
            return {}
        self.next_seconds = run.train_seconds  # the k-NN too, where it is on
        return self(run, scalars, 1.0)
