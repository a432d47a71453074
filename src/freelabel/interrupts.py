"""Ctrl-C (and SIGTERM) between training steps, so that a run always stops with its weights, BatchNorm
statistics, optimiser and step counter in agreement.

The first signal is only noted; the trainer asks :meth:`StopBetweenSteps.agreed` at each step boundary
and stops there. A second one raises ``KeyboardInterrupt`` at once, wherever the run is.
"""

from __future__ import annotations

import logging
import signal
import threading

import torch

log = logging.getLogger("freelabel")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopBetweenSteps:
    """A context in which SIGINT or SIGTERM asks the training loop to stop at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopBetweenSteps:
        self.requested = False
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

    def agreed(self, fabric) -> bool:
        """Whether to stop now: asked on this process, or (with several) on any of them, so that all stop
        at the same step."""
        if fabric.world_size == 1:
            return self.requested
        asked = torch.tensor(float(self.requested), device=fabric.device)
        return bool(fabric.all_reduce(asked, reduce_op="sum").item() > 0)
