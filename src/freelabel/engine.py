"""The training loop: one short loop on Lightning Fabric for every method.

Fabric picks devices and precision and wraps DDP. The loop in :func:`_pretrain` reads in one screen;
its parts have names: the budget clock (:mod:`freelabel.train.clock`), the optimiser schedule
(:mod:`freelabel.schedules`), what a run shows (:mod:`freelabel.train.monitor`), the online k-NN
and health checks (:mod:`freelabel.train.online_eval`), Ctrl-C between steps (:mod:`freelabel.train.interrupts`) and, below
in this module, checkpoints, resume and what an interrupt saves. It knows
no method by name: a method is any :class:`freelabel.methods.Method`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.fabric import Fabric

from . import run as rundir
from .config import ConfigError, RunConfig
from .data.loader import Batch, batches, steps_per_epoch
from .data.registry import open_dataset
from .data.views import Views
from .errors import DataError, TrainingError
from .hardware import loader_workers, resolve_precision
from .methods import Method, build_method
from .schedules import OptimizerSchedule
from .train.clock import BudgetClock
from .train.forecast import Forecast
from .train.interrupts import StopBetweenSteps
from .train.monitor import Monitor
from .train.online_eval import OnlineEval
from .train.sharding import (
    STRATEGIES,
    checkpoint_blocks,
    full_state,
    full_weights,
    load_full_state,
    strategy,
    whole_weights,
)

log = logging.getLogger("freelabel")


@dataclass
class TrainState:
    """Where a run stands; saved in every checkpoint so that ``--resume`` continues exactly."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # batches of this epoch already trained on
    cursor: int = 0  # places of this process's sequence of the epoch read, readable or not (data/loader.py)
    train_seconds: float = 0.0
    images_seen: int = 0
    skipped: list[str] = field(default_factory=list)  # files that failed to decode, each once
    loss: float | None = None  # the last logged loss
    knn_curve: list[dict] = field(default_factory=list)  # the online k-NN points so far
    health: list[dict] = field(default_factory=list)  # the health checks so far (train/health.py)

    def advance(self, images: int, cursor: int) -> None:
        """One step done, on ``images`` images of all processes together, this process's ending before
        place ``cursor`` of its sequence."""
        self.step += 1
        self.position += 1
        self.cursor = cursor
        self.images_seen += images

    def count_skipped(self, paths: list[str]) -> None:
        """Files that failed to decode (each counted once, in every epoch that meets it)."""
        known = set(self.skipped)
        self.skipped += [p for p in dict.fromkeys(paths) if p not in known]

    def next_epoch(self) -> None:
        self.epoch, self.position, self.cursor = self.epoch + 1, 0, 0


_FUSED = ("adam", "adamw", "sgd", "momentum", "nesterov")  # timm names of torch optimisers with a fused kernel


def build_optimizer(method: Method, cfg: RunConfig, world: int) -> torch.optim.Optimizer:
    """A timm optimizer with no weight decay on biases and norms; lr scaled by global batch / 256; fused on GPUs."""
    from timm.optim import create_optimizer_v2

    o = cfg.optim
    kwargs = {"momentum": o.momentum} if o.name in ("sgd", "momentum", "lars", "nesterov") else {}
    kwargs |= {"betas": tuple(o.betas)} if o.betas else {}
    if o.name in _FUSED and (
        cfg.accelerator in ("cuda", "gpu") or cfg.accelerator == "auto" and torch.cuda.is_available()
    ):
        kwargs["fused"] = True  # torch's fused CUDA update: one kernel for all parameters
    lr = o.lr * o.batch_size * world / 256
    try:
        return create_optimizer_v2(method, opt=o.name, lr=lr, weight_decay=o.weight_decay, **kwargs)
    except (AssertionError, ValueError, KeyError) as e:
        raise ConfigError(f"optimizer {o.name!r} cannot be made ({e}); try adamw, lars, sgd or lamb") from None


def step_generator(seed: int, step: int) -> torch.Generator:
    """The views' random stream of one step, for the global batch: a function of where the run is, so a
    resumed run draws exactly what the uninterrupted one would have, and of nothing else, so that any
    number of processes draw the views one process would (each its part, see ``Views(at=...)``)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def pretrain(cfg: RunConfig, out: str | Path, resume: bool = False) -> dict:
    """Pretrain ``cfg.method`` and return the run's metrics; the run directory is ``out``."""
    out = Path(out)
    if not resume and (out / rundir.CONFIG).exists():
        if rundir.has_results(out):
            raise rundir.RunError(
                f"{out} already holds a run; continue it with {rundir.resume_hint(out)}, or choose another --out"
            )
        log.info("%s holds a run stopped before its first checkpoint: starting it again", out)
    made = not out.exists()
    try:
        with ExitStack() as log_file:  # log.txt, once every check has passed and the run's folder is made
            return _pretrain(cfg, out, resume, log_file)
    except DataError:  # data found unfit in the first epoch: no run folder left behind, if this call made it
        if made and (not dist.is_initialized() or dist.get_rank() == 0) and not rundir.has_results(out):
            shutil.rmtree(out, ignore_errors=True)
        raise


def _pretrain(cfg: RunConfig, out: Path, resume: bool, log_file: ExitStack) -> dict:
    data = open_dataset(  # first: data that cannot be read stops the run before anything is written or said
        cfg.data.name, "train", size=cfg.data.image_size or cfg.views.size, allow_outside=cfg.data.allow_outside
    )
    found = rundir.load_latest_checkpoint(out) if resume else None  # so is a checkpoint that is refused
    fabric, method, model, optimizer, precision = _setup(cfg, data, out, log_file)
    schedule = OptimizerSchedule(optimizer, cfg.optim)  # before resuming: the peak learning rates
    state = _resume(out, found, model, optimizer, fabric, cfg.optim.batch_size) if resume else TrainState()
    online = OnlineEval(cfg, method, data, state.train_seconds, fabric.is_global_zero, state.knn_curve, state.health)
    clock = _budget_clock(cfg, len(data), fabric)  # training time runs from here, evaluation excluded
    rank, world = fabric.global_rank, fabric.world_size
    views = [Views(v) for v in method.views]
    workers = loader_workers(cfg.data.workers, world // cfg.num_nodes)  # this machine's cores at most
    stream = partial(
        batches,
        data,
        cfg.optim.batch_size,
        seed=cfg.seed,
        rank=rank,
        world=world,
        workers=workers,
        masks=method.masks,
        views=method.views,
        failed=state.count_skipped,
    )
    forecast = Forecast(cfg.budget, clock.total_steps, cfg.optim.batch_size * world, len(data), fabric.is_global_zero)
    monitor = Monitor(
        out, state, cfg.log_every, fabric.is_global_zero, lambda v: fabric.all_reduce(v, reduce_op="mean"), forecast
    )
    save = _checkpointer(out, state, model, optimizer, fabric)
    last: Batch | None = None  # the last batch, for the method's artefacts

    with monitor, _stop_between_steps(save, state, out, fabric) as stop:
        while clock.progress(state) < 1:
            for batch in _while_every_process_has_one(
                stream(epoch=state.epoch, start=state.position, cursor=state.cursor), fabric
            ):
                if (p := clock.progress(state)) >= 1:
                    break
                schedule(p)
                method.on_step(p)
                last = _on_device(batch, views, step_generator(cfg.seed, state.step), (rank, world), fabric.device)
                with stop.step():  # from the forward pass (BatchNorm statistics) to the step counter: one unit
                    outputs = model(last)
                    _stop_if_not_finite(outputs["loss"], state.step, cfg, out)
                    optimizer.zero_grad(set_to_none=True)
                    fabric.backward(outputs["loss"])
                    method.after_backward(p)
                    if cfg.optim.clip_grad:
                        fabric.clip_gradients(model, optimizer, max_norm=cfg.optim.clip_grad)
                    optimizer.step()
                    with whole_weights(model, cfg.strategy, needed=type(method).after_step is not Method.after_step):
                        method.after_step(p)
                    state.advance(len(batch.images) * world, int(batch.index[-1]) + 1)
                clock.tick(state)
                monitor.step(outputs, optimizer.param_groups[0]["lr"], clock.progress(state))
                state.loss = monitor.metrics.get("loss", state.loss)
                _evaluate_and_save(state, cfg.checkpoint_every, clock, online, monitor, save)
                stop.check()
            else:
                _check_epoch(state, cfg, len(data), world)
                state.next_epoch()
        monitor.done()
    for tag, value in online.finish(state, monitor.metrics).items():
        monitor.scalar(tag, value, state.step)
    save()
    weights = full_weights(model)  # every process: under FSDP it gathers the shards
    return _finish(
        cfg, out, state, method, weights, last, monitor, precision, fabric, len(data), getattr(data, "skipped", [])
    )


def _evaluate_and_save(
    state: TrainState, every: int, clock: BudgetClock, online: OnlineEval, monitor: Monitor, save: Callable[[], None]
) -> None:
    """After a step, outside the budget's time: the online evaluation when due (health, k-NN), then the
    periodic checkpoint (which keeps their points)."""
    with clock.paused():
        if online.due(state, progress := clock.progress(state)):
            for tag, value in online(state, monitor.metrics, progress).items():
                monitor.scalar(tag, value, state.step)
        if state.step % every == 0:
            save()


def _setup(
    cfg: RunConfig, data, out: Path, log_file: ExitStack
) -> tuple[Fabric, Method, torch.nn.Module, torch.optim.Optimizer, str]:
    """Fabric, the method (the same initial weights on every process), its wrapped module and optimiser,
    and the precision; the run's folder, its log and config are made once every check has passed."""
    cfg.data.channels = data.channels
    torch.manual_seed(cfg.seed)  # the same initial weights on every process
    method = build_method(cfg, data.channels)
    precision = resolve_precision(cfg.precision, cfg.accelerator)
    _check_strategy(cfg)
    fabric = Fabric(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        precision=precision,
        strategy=strategy(cfg.strategy, cfg.activation_checkpointing),
    )
    fabric.launch()
    if steps_per_epoch(len(data), cfg.optim.batch_size, fabric.world_size) == 0:
        raise ConfigError(
            f"{len(data)} images cannot fill one batch of {cfg.optim.batch_size * fabric.world_size}; lower --batch-size"
        )
    if fabric.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        log_file.enter_context(rundir.logging_to(out))  # one writer of log.txt: the first process
        rundir.tidy_run(out)
        rundir.check_room(out, method.state_dict())
        rundir.save_config(out, cfg)
        log.info(
            "%s on %s: %d images, %s backbone, %s, %d device(s)",
            cfg.method,
            cfg.data.name,
            len(data),
            cfg.backbone.name,
            precision,
            fabric.world_size,
        )
        log.info("if training stops, continue it with %s", rundir.resume_hint(out))
    fabric.barrier()
    if cfg.sync_bn and fabric.world_size > 1:
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    if cfg.channels_last:
        method = method.to(memory_format=torch.channels_last)
    if cfg.activation_checkpointing and cfg.strategy != "fsdp":  # FSDP checkpoints its own units
        checkpoint_blocks(method)
    optimizer = build_optimizer(method, cfg, fabric.world_size)
    model, optimizer = fabric.setup(method, optimizer)
    if cfg.compile:
        model = torch.compile(model)
    return fabric, method, model, optimizer, precision


def _check_strategy(cfg: RunConfig) -> None:
    """One line for a strategy this run cannot have, before anything starts."""
    on_cpu = cfg.accelerator == "cpu" or not torch.cuda.is_available()
    processes = int(os.environ.get("WORLD_SIZE", 1))  # under torchrun
    processes = max(processes, cfg.num_nodes * (cfg.devices if isinstance(cfg.devices, int) else 1))
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"strategy {cfg.strategy!r} is not one of {', '.join(STRATEGIES)}")
    if cfg.sync_bn and on_cpu and processes > 1:
        raise ConfigError(
            "sync_bn needs CUDA devices (torch's SyncBatchNorm runs on GPUs only); leave it off on the CPU"
        )
    if cfg.strategy == "fsdp" and on_cpu:
        raise ConfigError(
            "--strategy fsdp needs CUDA devices (Lightning runs FSDP on GPUs only); use --strategy ddp on the CPU"
        )
    if cfg.strategy == "fsdp" and cfg.eval_every_minutes:
        raise ConfigError(
            "the online k-NN (--eval-every) runs the backbone on one process, which FSDP's shards "
            "cannot; evaluate the finished run with `freelabel eval knn`"
        )


def _budget_clock(cfg: RunConfig, images: int, fabric: Fabric) -> BudgetClock:
    per_epoch = steps_per_epoch(images, cfg.optim.batch_size, fabric.world_size)
    budget = cfg.budget
    total_steps = budget.steps or (math.ceil(budget.epochs * per_epoch) if budget.epochs else None)
    agree = (lambda seconds: fabric.broadcast(seconds, 0)) if fabric.world_size > 1 else None
    return BudgetClock(total_steps, budget.minutes, agree)


def _while_every_process_has_one(batches: Iterator[Batch], fabric: Fabric) -> Iterator[Batch]:
    """This process's batches for as long as every process has one: with unreadable files the processes'
    parts of an epoch can make different numbers of full batches, and the epoch ends for all at once."""
    if fabric.world_size == 1:
        yield from batches
        return
    for batch in itertools.chain(batches, [None]):
        has = torch.tensor(int(batch is not None), device=fabric.device)
        if not fabric.all_reduce(has, reduce_op="min").item():
            return
        yield batch


def _check_epoch(state: TrainState, cfg: RunConfig, images: int, world: int) -> None:
    """An epoch that made no step (begun at its start): fewer readable images than a batch needs."""
    if state.position == 0:
        unreadable = len(state.skipped)
        example = f", e.g. {state.skipped[-1]}" if state.skipped else ""
        per = f" per process ({world} processes)" if world > 1 else ""
        raise DataError(
            f"--data {cfg.data.name}: {unreadable} of its {images} images cannot be read{example}; the "
            f"{images - unreadable} readable images fill no batch of {cfg.optim.batch_size}{per}: "
            "lower --batch-size or replace the unreadable files"
        )


def _on_device(
    batch: Batch, views: list[Views], g: torch.Generator, rank_world: tuple[int, int], device: torch.device
) -> Batch:
    """The batch on ``device`` with the method's views made from its images (channels-last): from the
    crops made where files were decoded, or from the whole images held in memory. Each sample's view is
    drawn as part of the global batch (this process's batch is part ``rank`` of ``world`` equal parts),
    so the views do not depend on how the batch is split over processes."""
    rank, world = rank_world
    at = (rank * len(batch.images), len(batch.images) * world)
    images = batch.images.to(device, non_blocking=True)
    if batch.crops:
        made = [v(c.to(device, non_blocking=True), g, cropped=True, at=at) for v, c in zip(views, batch.crops)]
    else:
        made = [v(images, g, at=at) for v in views]
    made = [x.contiguous(memory_format=torch.channels_last) for x in made]
    masks = {k: m.to(device, non_blocking=True) for k, m in batch.masks.items()}
    return dataclasses.replace(batch, images=images, views=made, masks=masks)


def _stop_if_not_finite(loss: torch.Tensor, step: int, cfg: RunConfig, out: Path) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(
            f"the loss became {loss.item()} at step {step}; lower the learning rate (--lr, now {cfg.optim.lr}), "
            f"add optim.clip_grad, or use --precision 32-true, and continue from the last good checkpoint with "
            f"{rundir.resume_hint(out)} and the changed flag"
        )


# ----------------------------------------------------------------------------- checkpoints and resume
def _save_checkpoint(
    out: Path, state: TrainState, model: torch.nn.Module, optimizer: torch.optim.Optimizer, fabric: Fabric
) -> None:
    """Weights, optimiser, where the run stands and the global random state, written by the first process;
    full state dicts under every strategy (see :mod:`freelabel.train.sharding`)."""
    weights, optim = full_state(model, optimizer)
    train = asdict(state) | _across_processes(state, fabric)
    if fabric.is_global_zero:
        saved = {"optimizer": optim, "train": train, "torch_rng": torch.get_rng_state()}
        rundir.save_checkpoint(out, state.step, weights, saved)
    fabric.barrier()


def _checkpointer(
    out: Path, state: TrainState, model: torch.nn.Module, optimizer: torch.optim.Optimizer, fabric: Fabric
) -> Callable[[], None]:
    """A function that saves a checkpoint where the run stands, once: an interrupt just after a periodic
    save, or the end of the run, does not write the same step again."""
    saved_at = None

    def save() -> None:
        nonlocal saved_at
        if saved_at != (state.step, len(state.knn_curve), len(state.health)):
            _save_checkpoint(out, state, model, optimizer, fabric)
            saved_at = (state.step, len(state.knn_curve), len(state.health))

    return save


def _across_processes(state: TrainState, fabric: Fabric) -> dict:
    """What differs between processes, gathered (on every process): each one's place in its sequence of
    the epoch (``cursor``, one per process) and the unreadable files all of them met."""
    if fabric.world_size == 1:
        return {"cursor": [state.cursor]}
    parts: list = [None] * fabric.world_size
    dist.all_gather_object(parts, (state.cursor, state.skipped))
    return {"cursor": [c for c, _ in parts], "skipped": list(dict.fromkeys(p for _, s in parts for p in s))}


def _resume(
    out: Path,
    found: tuple[Path, dict, dict] | None,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    fabric: Fabric,
    batch_size: int,
) -> TrainState:
    """Load the newest checkpoint of ``out`` (``found``: :func:`freelabel.run.load_latest_checkpoint`) into
    ``model`` and ``optimizer``, whatever the strategy of the run that saved it; where the run stood. A run
    stopped before its first checkpoint starts again from step 0."""
    if found is None:
        log.info("%s has no checkpoint yet: starting it from step 0 with its saved config", out)
        return TrainState()
    ckpt, weights, saved = found
    load_full_state(model, optimizer, weights, saved["optimizer"])
    torch.set_rng_state(saved["torch_rng"])
    log.info("resumed from %s (step %d)", ckpt, saved["train"]["step"])
    train = saved["train"] | {"skipped": list(saved["train"].get("skipped", []))}
    train.pop("skipped_batches", None)  # an older freelabel's count of batches that made no step
    cursors = train.pop("cursor", None)  # one per process; none from an older freelabel, or another world
    state = TrainState(**train)
    rank, world = fabric.global_rank, fabric.world_size
    if isinstance(cursors, list) and len(cursors) == world:
        state.cursor = cursors[rank]
    else:
        state.cursor = state.position * batch_size
    return state


@contextmanager
def _stop_between_steps(
    save: Callable[[], None], state: TrainState, out: Path, fabric: Fabric
) -> Iterator[StopBetweenSteps]:
    """Ctrl-C (or SIGTERM) lets the running step finish, saves a checkpoint and stops the run; a second
    one stops at once, and a step it cuts in the middle is dropped whole (the last checkpoint stays the
    one to resume from). Either way the resumed run continues exactly."""

    def any_process(asked: bool) -> bool:
        return fabric.all_reduce(torch.tensor(float(asked), device=fabric.device), reduce_op="sum").item() > 0

    with StopBetweenSteps(any_process if fabric.world_size > 1 else None) as stop:
        try:
            yield stop
        except KeyboardInterrupt:
            if stop.in_step:
                log.warning(
                    "stopped in the middle of step %d, which is dropped; continue from the last checkpoint with %s",
                    state.step + 1,
                    rundir.resume_hint(out),
                )
            else:
                save()
                log.warning(
                    "interrupted at step %d; a checkpoint is saved: continue with %s",
                    state.step,
                    rundir.resume_hint(out),
                )
            raise


def _finish(
    cfg: RunConfig,
    out: Path,
    state: TrainState,
    method: Method,
    weights: dict,
    last: Batch | None,
    monitor: Monitor,
    precision: str,
    fabric: Fabric,
    images: int,
    unreadable: list[str],
) -> dict:
    """The run's results; the first process writes the backbone, the method's artefacts and metrics.json."""
    gathered = _across_processes(state, fabric).get("skipped", state.skipped)
    skipped = unreadable + gathered  # files unreadable when the data was opened (shards) and in training
    result = {
        "method": cfg.method,
        "backbone": cfg.backbone.name,
        "steps": state.step,
        "epochs": state.images_seen / max(1, images - len(gathered)),  # of the readable images
        "images_seen": state.images_seen,
        "train_minutes": state.train_seconds / 60,
        "images_per_s": state.images_seen / max(state.train_seconds, 1e-9),
        "final_loss": state.loss,
        "precision": precision,
        "devices": fabric.world_size,
        "skipped_files": len(skipped),
        "skipped_examples": skipped[:20],
    }
    if state.knn_curve:
        result["knn_curve"] = state.knn_curve
    if state.health:
        result["health"] = state.health
    if fabric.is_global_zero:
        rundir.save_backbone(
            out, {k.removeprefix("backbone."): v for k, v in weights.items() if k.startswith("backbone.")}
        )
        for name, data in (method.artefacts(last) if last and cfg.strategy != "fsdp" else {}).items():  # 1 process
            rundir.save_artefact(out, name, data)
        rundir.update_metrics(out, "pretrain", result)
        monitor.close()
        if skipped:
            log.warning("skipped %d unreadable files, e.g. %s", len(skipped), skipped[0])
        log.info(
            "done: %d steps, %.1f min, %.0f images/s; run directory %s",
            state.step,
            result["train_minutes"],
            result["images_per_s"],
            out,
        )
    return result
