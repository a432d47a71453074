"""The budget clock: how far a run is, by steps or by minutes of training time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol


class Position(Protocol):
    step: int
    train_seconds: float


class Seen(Position, Protocol):
    images_seen: int


class BudgetClock:
    """A run's progress from 0 to 1: ``step / total_steps``, or training time over ``minutes``.

    Training time runs from the clock's creation, data loading included, and stops inside
    :meth:`paused` (evaluation, checkpoints). :meth:`tick` adds the time since the last tick to the
    run's ``train_seconds``; with ``agree`` (a broadcast from the first process) every process then
    holds the same time, so that all stop at the same step."""

    def __init__(self, total_steps: int | None, minutes: float | None, agree: Callable[[float], float] | None = None):
        self.total_steps, self.minutes, self.agree = total_steps, minutes, agree
        self._mark = time.perf_counter()

    def progress(self, run: Position) -> float:
        if self.total_steps:
            return run.step / self.total_steps
        return run.train_seconds / (self.minutes * 60)

    def tick(self, run: Position) -> None:
        now = time.perf_counter()
        run.train_seconds += now - self._mark
        self._mark = now
        if self.minutes and self.agree:
            run.train_seconds = self.agree(run.train_seconds)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside does not count as training."""
        try:
            yield
        finally:
            self._mark = time.perf_counter()
