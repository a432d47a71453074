"""The speed forecast a run logs after its first steps: its images/s and what that means for its budget."""

from __future__ import annotations

import logging

from ..config import BudgetConfig
from .clock import Seen

log = logging.getLogger("freelabel")

AFTER, OVER = 3, 10  # steps of warm-up, then the steps whose speed the forecast uses


def _duration(seconds: float) -> str:
    return (
        f"{seconds:.0f} s"
        if seconds < 120
        else f"{seconds / 60:.1f} min"
        if seconds < 7200
        else f"{seconds / 3600:.1f} h"
    )


def forecast(
    images_per_s: float, images_per_step: int, budget: BudgetConfig, steps_left: int | None, epoch_images: int
) -> str:
    """What the measured speed means for the budget: the time a budget of steps or epochs takes, or
    the images and epochs a budget of minutes covers."""
    speed = f"expected speed {images_per_s:,.0f} images/s"
    if steps_left is not None:
        seconds = steps_left * images_per_step / images_per_s
        return f"{speed}: the {steps_left:,} steps left of the budget take about {_duration(seconds)} of training"
    images = images_per_s * budget.minutes * 60
    return f"{speed}: the budget of {budget.minutes:g} min covers about {images:,.0f} images ({images / epoch_images:.1f} epochs)"


class Forecast:
    """Measures the training rate over steps ``AFTER`` to ``AFTER + OVER`` of this session (resumed
    or not) and logs :func:`forecast` once, where ``enabled`` (the first process)."""

    def __init__(
        self, budget: BudgetConfig, total_steps: int | None, images_per_step: int, epoch_images: int, enabled: bool
    ):
        self.budget, self.total_steps, self.images_per_step = budget, total_steps, images_per_step
        self.epoch_images, self.enabled = epoch_images, enabled
        self.steps, self.start = 0, (0.0, 0)

    def step(self, run: Seen) -> None:
        self.steps += 1
        if self.steps == AFTER:
            self.start = (run.train_seconds, run.images_seen)
        elif self.steps == AFTER + OVER and self.enabled:
            rate = (run.images_seen - self.start[1]) / max(run.train_seconds - self.start[0], 1e-9)
            steps_left = self.total_steps - run.step if self.total_steps else None
            log.info(forecast(rate, self.images_per_step, self.budget, steps_left, self.epoch_images))
