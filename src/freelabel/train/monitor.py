"""What a run shows while it trains: a progress bar, TensorBoard scalars, the training rate, and a log
line every 30 s of training when the output is not a terminal (a job's log file)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from .clock import Seen
from .forecast import Forecast

log = logging.getLogger("freelabel")


def describe(step: int, m: dict[str, float]) -> str:
    return f"step {step}  loss {m.get('loss', float('nan')):.4f}  lr {m.get('lr', 0):.2e}  {m.get('images_per_s', 0):.0f} img/s"


class Monitor:
    """Every ``log_every`` steps: the method's outputs averaged over the processes (a collective call:
    every process makes it), the learning rate and the images per second of training time since the
    last report, to TensorBoard (``out/tb``), the bar and the log. Only an ``enabled`` process (the
    first) writes or shows anything. ``metrics`` holds the last report."""

    def __init__(
        self,
        out: Path,
        run: Seen,
        log_every: int,
        enabled: bool,
        reduce: Callable[[torch.Tensor], torch.Tensor],
        forecast: Forecast | None = None,
    ):
        self.run, self.log_every, self.enabled, self.reduce = run, log_every, enabled, reduce
        self.forecast = forecast
        self.writer = _tensorboard(out, purge_step=run.step + 1) if enabled else None
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self.task = self.bar.add_task("pretrain", total=1000, info="")
        self.metrics: dict[str, float] = {}
        self._window = (run.images_seen, run.train_seconds)  # where the rate's window starts
        self._last_line = -1.0

    def __enter__(self) -> Monitor:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def step(self, outputs: dict[str, torch.Tensor], lr: float, progress: float) -> None:
        """After a step; reports every ``log_every`` steps (and the speed forecast once, early on)."""
        run = self.run
        if self.forecast:
            self.forecast.step(run)
        if run.step % self.log_every:
            return
        images, seconds = run.images_seen - self._window[0], run.train_seconds - self._window[1]
        self._window = (run.images_seen, run.train_seconds)
        self.metrics = {k: self.reduce(v.detach().float()).item() for k, v in outputs.items()}
        self.metrics.update(lr=lr, images_per_s=images / max(seconds, 1e-9))
        for k, v in self.metrics.items():
            self.scalar(f"train/{k}", v, run.step)
        self.bar.update(self.task, completed=int(1000 * progress), info=describe(run.step, self.metrics))
        if self.enabled and not self.bar.console.is_terminal and run.train_seconds - self._last_line >= 30:
            self._last_line = run.train_seconds
            log.info("%s  %.0f%%", describe(run.step, self.metrics), 100 * progress)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer:
            self.writer.add_scalar(tag, value, step)

    def done(self) -> None:
        self.bar.update(self.task, completed=1000)

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def _tensorboard(out: Path, purge_step: int):
    """The TensorBoard writer; events from ``purge_step`` on, left by a run that stopped after its last
    checkpoint, are hidden, so a resumed run's curves have each step once."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "tb"), purge_step=purge_step)
