"""The training loop: one short loop on Lightning Fabric for every method.

Fabric picks devices and precision and wraps DDP; this module keeps the rest readable: the data
order, the views, the learning-rate schedule, the budget, logging, checkpoints and resume. It knows
no method by name: a method is any :class:`freelabel.methods.Method`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.fabric import Fabric
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from . import run as rundir
from .config import ConfigError, RunConfig
from .data.loader import batches, steps_per_epoch
from .data.registry import open_dataset
from .data.views import Views
from .ema import cosine_schedule
from .errors import TrainingError
from .evaluate.knn import knn_eval
from .hardware import resolve_precision
from .methods import Method, build_method

log = logging.getLogger("freelabel")


@dataclass
class TrainState:
    """Where a run stands; saved in every checkpoint so that ``--resume`` continues exactly."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # batches of this epoch already trained on
    train_seconds: float = 0.0
    images_seen: int = 0
    skipped: list[str] = field(default_factory=list)  # files that failed to decode


def lr_at(progress: float, warmup: float, min_lr: float = 0.0) -> float:
    """Multiplier of the peak learning rate: linear warm-up over ``warmup``, then cosine to ``min_lr``."""
    if progress < warmup:
        return progress / warmup
    t = min(1.0, (progress - warmup) / max(1e-12, 1 - warmup))
    return min_lr + (1 - min_lr) * 0.5 * (1 + math.cos(math.pi * t))


def build_optimizer(method: Method, cfg: RunConfig, world: int) -> torch.optim.Optimizer:
    """A timm optimizer with no weight decay on biases and norms; lr scaled by global batch / 256."""
    from timm.optim import create_optimizer_v2

    o = cfg.optim
    kwargs = {"momentum": o.momentum} if o.name in ("sgd", "momentum", "lars", "nesterov") else {}
    kwargs |= {"betas": tuple(o.betas)} if o.betas else {}
    lr = o.lr * o.batch_size * world / 256
    try:
        return create_optimizer_v2(method, opt=o.name, lr=lr, weight_decay=o.weight_decay, **kwargs)
    except (AssertionError, ValueError, KeyError) as e:
        raise ConfigError(f"optimizer {o.name!r} cannot be made ({e}); try adamw, lars, sgd or lamb") from None


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The views' random stream of one step on one process: a function of where the run is, so a
    resumed run draws exactly what the uninterrupted one would have."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1024 + rank)


def pretrain(cfg: RunConfig, out: str | Path, resume: bool = False) -> dict:
    """Pretrain ``cfg.method`` and return the run's metrics; the run directory is ``out``."""
    out = Path(out)
    if not resume and (out / rundir.CONFIG).exists():
        raise rundir.RunError(f"{out} already holds a run; continue it with --resume {out}, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    handler = rundir.file_logger(out)
    handler.addFilter(lambda record: not dist.is_initialized() or dist.get_rank() == 0)  # one log.txt writer
    log.addHandler(handler)
    try:
        return _pretrain(cfg, out, resume)
    finally:
        log.removeHandler(handler)
        handler.close()


def _pretrain(cfg: RunConfig, out: Path, resume: bool) -> dict:
    data = open_dataset(cfg.data.name, "train", size=cfg.data.image_size or cfg.views.size)
    cfg.data.channels = data.channels
    torch.manual_seed(cfg.seed)  # the same initial weights on every process
    method = build_method(cfg, data.channels)
    precision = resolve_precision(cfg.precision, cfg.accelerator)
    fabric = Fabric(accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, precision=precision)
    fabric.launch()
    main = fabric.is_global_zero
    if cfg.sync_bn and fabric.world_size > 1 and fabric.device.type != "cuda":  # before anything is written
        raise ConfigError("sync_bn needs CUDA devices (torch's SyncBatchNorm runs on GPUs only); leave it off on the CPU")
    if main:
        rundir.save_config(out, cfg)
        log.info("%s on %s: %d images, %s backbone, %s, %d device(s)", cfg.method, cfg.data.name, len(data),
                 cfg.backbone.name, precision, fabric.world_size)  # fmt: skip
    fabric.barrier()
    if cfg.sync_bn and fabric.world_size > 1:
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    if cfg.channels_last:
        method = method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(method, cfg, fabric.world_size)
    model, optimizer = fabric.setup(method, optimizer)
    if cfg.compile:
        model = torch.compile(model)

    peak_lrs = [g["lr"] for g in optimizer.param_groups]  # before a resumed optimiser brings its last lr
    state = TrainState()
    if resume:
        ckpt = rundir.latest_checkpoint(out)
        if ckpt is None:
            raise rundir.RunError(f"{out} has no checkpoint to resume from; start it again without --resume")
        weights, saved = rundir.load_checkpoint(ckpt)
        method.load_state_dict(weights)
        optimizer.load_state_dict(saved["optimizer"])
        state = TrainState(**saved["train"])
        torch.set_rng_state(saved["torch_rng"])
        log.info("resumed from %s (step %d)", ckpt, state.step)

    per_epoch = steps_per_epoch(len(data), cfg.optim.batch_size, fabric.world_size)
    if per_epoch == 0:
        raise ConfigError(f"{len(data)} images cannot fill one batch of {cfg.optim.batch_size * fabric.world_size}; lower --batch-size")
    budget = cfg.budget
    total_steps = budget.steps or (math.ceil(budget.epochs * per_epoch) if budget.epochs else None)

    def progress() -> float:
        if total_steps:
            return state.step / total_steps
        return state.train_seconds / (budget.minutes * 60)

    views = [Views(v) for v in method.views]
    writer = _tensorboard(out) if main else None
    evaluator = _online_knn(cfg, method, fabric.device, precision) if cfg.eval_every_minutes and main else None
    interval = (cfg.eval_every_minutes or 0) * 60
    next_eval = (state.train_seconds // interval + 1) * interval if evaluator else math.inf
    curve: list[dict] = []
    last: dict | None = None  # the last batch, for the method's artefacts

    def checkpoint() -> None:
        if main:
            train = asdict(state)
            rundir.save_checkpoint(out, state.step, method.state_dict(), {
                "optimizer": optimizer.state_dict(), "train": train, "torch_rng": torch.get_rng_state()})  # fmt: skip
        fabric.barrier()

    bar = _progress_bar(enabled=main)
    task = bar.add_task("pretrain", total=1000, info="")
    window_start, window_images = time.perf_counter(), 0
    last_log = -1.0
    metrics: dict[str, float] = {}
    tick = time.perf_counter()  # training time runs from here, loading included, evaluation excluded
    try:
        with bar:
            while progress() < 1:
                for batch in batches(data, cfg.optim.batch_size, seed=cfg.seed, epoch=state.epoch, start=state.position,
                                     rank=fabric.global_rank, world=fabric.world_size, workers=cfg.data.workers,
                                     masks=method.masks):  # fmt: skip
                    if progress() >= 1:
                        break
                    state.skipped += batch.skipped
                    p = progress()
                    for group, peak in zip(optimizer.param_groups, peak_lrs):
                        group["lr"] = peak * lr_at(p, cfg.optim.warmup, cfg.optim.min_lr)
                        if group["weight_decay"] and cfg.optim.weight_decay_end is not None:
                            group["weight_decay"] = cosine_schedule(p, cfg.optim.weight_decay, cfg.optim.weight_decay_end)
                    method.on_step(p)
                    g = step_generator(cfg.seed, state.step, fabric.global_rank)
                    images = batch.images.to(fabric.device, non_blocking=True)
                    made = [v(images, g).contiguous(memory_format=torch.channels_last) for v in views]
                    masks = {k: m.to(fabric.device, non_blocking=True) for k, m in batch.masks.items()}
                    last = {"images": images, "labels": batch.labels, "views": made, "texts": batch.texts, "masks": masks}
                    outputs = model(last)
                    loss = outputs["loss"]
                    if not torch.isfinite(loss):
                        raise TrainingError(
                            f"the loss became {loss.item()} at step {state.step}; lower the learning rate "
                            f"(--lr, now {cfg.optim.lr}), add optim.clip_grad, or use --precision 32-true. "
                            f"The last good checkpoint is in {out / rundir.CHECKPOINTS}")  # fmt: skip
                    optimizer.zero_grad(set_to_none=True)
                    fabric.backward(loss)
                    method.after_backward(p)
                    if cfg.optim.clip_grad:
                        fabric.clip_gradients(model, optimizer, max_norm=cfg.optim.clip_grad)
                    optimizer.step()
                    method.after_step(p)

                    state.step += 1
                    state.position += 1
                    state.images_seen += len(images) * fabric.world_size
                    now = time.perf_counter()
                    state.train_seconds += now - tick
                    tick = now
                    if budget.minutes and fabric.world_size > 1:  # every process stops at the same step
                        state.train_seconds = fabric.broadcast(state.train_seconds, 0)
                    window_images += len(images) * fabric.world_size
                    if state.step % cfg.log_every == 0:
                        now = time.perf_counter()
                        metrics = {k: fabric.all_reduce(v.detach().float(), reduce_op="mean").item()
                                   for k, v in outputs.items()}
                        metrics.update(lr=optimizer.param_groups[0]["lr"], images_per_s=window_images / (now - window_start))
                        window_start, window_images = now, 0
                        if writer:
                            for k, v in metrics.items():
                                writer.add_scalar(f"train/{k}", v, state.step)
                        bar.update(task, completed=int(1000 * progress()), info=_describe(state.step, metrics))
                        if main and not bar.console.is_terminal and state.train_seconds - last_log >= 30:
                            last_log = state.train_seconds
                            log.info("%s  %.0f%%", _describe(state.step, metrics), 100 * progress())
                    if state.step % cfg.checkpoint_every == 0:
                        checkpoint()
                        tick = time.perf_counter()
                    if state.train_seconds >= next_eval:
                        curve.append(evaluator(state))
                        writer.add_scalar("knn/top1_k20", curve[-1]["top1_k20"], state.step)
                        next_eval += interval
                        window_start, window_images = time.perf_counter(), 0
                        tick = window_start
                else:
                    state.epoch += 1
                    state.position = 0
            bar.update(task, completed=1000)
    except KeyboardInterrupt:
        checkpoint()
        log.warning("interrupted at step %d; a checkpoint is saved: resume with `freelabel pretrain --resume %s`",
                    state.step, out)  # fmt: skip
        raise
    checkpoint()
    if evaluator and (not curve or curve[-1]["step"] != state.step):
        curve.append(evaluator(state))
    result = {
        "method": cfg.method, "backbone": cfg.backbone.name, "steps": state.step, "epochs": state.images_seen / len(data),
        "images_seen": state.images_seen, "train_minutes": state.train_seconds / 60,
        "images_per_s": state.images_seen / max(state.train_seconds, 1e-9), "final_loss": metrics.get("loss"),
        "precision": precision, "devices": fabric.world_size, "skipped_files": len(state.skipped),
        "skipped_examples": state.skipped[:20],
    }  # fmt: skip
    if curve:
        result["knn_curve"] = curve
    if main:
        rundir.save_backbone(out, method.backbone.state_dict())
        for name, data in (method.artefacts(last) if last else {}).items():
            rundir.save_artefact(out, name, data)
        rundir.update_metrics(out, "pretrain", result)
        if writer:
            writer.close()
        if state.skipped:
            log.warning("skipped %d unreadable files, e.g. %s", len(state.skipped), state.skipped[0])
        log.info("done: %d steps, %.1f min, %.0f images/s; run directory %s",
                 state.step, result["train_minutes"], result["images_per_s"], out)  # fmt: skip
    return result


def _describe(step: int, m: dict[str, float]) -> str:
    return f"step {step}  loss {m.get('loss', float('nan')):.4f}  lr {m.get('lr', 0):.2e}  {m.get('images_per_s', 0):.0f} img/s"


def _progress_bar(enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                    TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=Console(stderr=True),
                    disable=not enabled)  # fmt: skip


def _tensorboard(out: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "tb"))


def _online_knn(cfg: RunConfig, method: Method, device: torch.device, precision: str):
    """k-NN of the backbone during training, for the curve of accuracy against training time."""
    size = cfg.data.image_size or cfg.views.size
    train, test = open_dataset(cfg.data.name, "train", size), open_dataset(cfg.data.name, "test", size)
    if any(label < 0 for label in (train[0][1], test[0][1])):
        log.warning("eval_every_minutes ignored: %s has no labels", cfg.data.name)
        return None

    def evaluate(state: TrainState) -> dict:
        acc = knn_eval(method.backbone, train, test, cfg.views, device, autocast=precision.startswith("bf16"),
                       workers=cfg.data.workers)  # fmt: skip
        log.info("k-NN at %.1f min (step %d): %s", state.train_seconds / 60, state.step, acc)
        return {"minutes": state.train_seconds / 60, "step": state.step, **acc}

    return evaluate
