"""Ctrl-C (and SIGTERM) between training steps, so that a run always stops with its weights, BatchNorm
statistics, optimiser and step counter in agreement.

The first signal is only noted; the loop asks :meth:`StopBetweenSteps.check` at each step boundary and
stops there. A second one raises ``KeyboardInterrupt`` at once, wherever the run is; ``in_step`` (see
:meth:`StopBetweenSteps.step`) then says whether a step was cut in the middle.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("freelabel")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopBetweenSteps:
    """A context in which SIGINT or SIGTERM asks the training loop to stop at the next step boundary.

    ``agree`` (with several processes) turns this process's request into the decision of all of them,
    so that every process stops at the same step."""

    def __init__(self, agree: Callable[[bool], bool] | None = None) -> None:
        self.agree = agree
        self.requested = False
        self.in_step = False  # while a step has changed some of the run's state and not yet all of it
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopBetweenSteps:
        self.requested = self.in_step = False
        if threading.current_thread() is threading.main_thread():  # Python runs signal handlers there only
            self._previous = {s: signal.signal(s, self._on_signal) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _on_signal(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after this step to save a checkpoint (Ctrl-C again to stop at once)")

    @contextmanager
    def step(self) -> Iterator[None]:
        """Around the part of a step that changes the run's state: ``in_step`` is true inside, and stays true
        if an interrupt leaves it half-way."""
        self.in_step = True
        yield
        self.in_step = False

    def check(self) -> None:
        """At a step boundary: raise ``KeyboardInterrupt`` if a stop was asked for (on any process)."""
        if self.agree(self.requested) if self.agree else self.requested:
            raise KeyboardInterrupt
