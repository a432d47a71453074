"""Ctrl-C between training steps, so that a run always stops with its weights, BatchNorm statistics,
optimiser and step counter in agreement.

The first SIGINT is only noted; the trainer asks :meth:`StopBetweenSteps.agreed` at each step boundary
and stops there. A second SIGINT raises ``KeyboardInterrupt`` at once, wherever the run is.
"""

from __future__ import annotations

import logging
import signal
import threading

import torch

log = logging.getLogger("freelabel")


class StopBetweenSteps:
    """A context in which SIGINT asks the training loop to stop at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> StopBetweenSteps:
        self.requested = False
        if threading.current_thread() is threading.main_thread():  # Python runs signal handlers there only
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_sigint(self, signum, frame) -> None:
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
