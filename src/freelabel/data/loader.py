"""Batches of ``uint8`` images in a seeded order that a run can resume from any step.

The order of epoch ``e`` is a permutation seeded by ``(seed, e)``; with ``world`` processes each
global batch is cut into ``world`` contiguous slices, so that ``world`` processes see together
exactly the batches one process would see with the global batch size.

A ``masks`` maker (a method's, see :mod:`freelabel.data.masking`) is called once per batch, in the
collator (in the worker processes when there are any), with a generator seeded by where the batch is
in the run; what it returns travels with the batch as ``Batch.masks``.

Files are cropped for the method's views where they are decoded (:mod:`.crops`), each sample with a
generator seeded by ``(seed, epoch, index)``; image shards (:mod:`.shards`) stream their own batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch.utils.data import DataLoader, Dataset

from ..hardware import loader_workers
from .crops import RandomCrops, crop_generator
from .sources import TensorImages
from .views import ViewConfig


@dataclass
class Batch:
    """One step's data: the loader fills in images, labels, texts and masks; the engine adds the views
    (the method's augmented, normalised copies of the images) and hands the whole to the method."""

    images: torch.Tensor  # uint8 [B, C, H, W]
    labels: torch.Tensor | None = None  # int64 [B], -1 where unknown
    skipped: list[str] = field(default_factory=list)  # paths that failed to decode in this batch
    texts: list[str] | None = None  # captions, where the data has them (items of three: image, label, text)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # made by the method's mask maker
    views: list[torch.Tensor] = field(default_factory=list)  # float [B, C, S, S] each, one per ViewConfig
    crops: list[torch.Tensor] | None = None  # files: uint8 [B, C, S, S] per view, cropped from the whole image


MaskMaker = Callable[[int, torch.Generator], dict[str, torch.Tensor]]  # (batch size, generator) -> masks
MIN_BATCH = 2  # fewer images than this (every one of them broken, or all but one) make no training step


def trim(batch: Batch, n: int) -> Batch:
    """The first ``n`` images of ``batch`` with their labels, captions and masks (so that every process
    of a run trains on as many images as the one with the fewest readable)."""
    if n >= len(batch.images):
        return batch
    labels = batch.labels[:n] if batch.labels is not None else None
    texts = batch.texts[:n] if batch.texts is not None else None
    return replace(
        batch, images=batch.images[:n], labels=labels, texts=texts, masks={k: m[:n] for k, m in batch.masks.items()}
    )


def collate(items: list) -> Batch:
    """Stack decoded items; drop (and report) the ones that failed to decode. An item's image may be a
    list of crops, one per view: then ``crops`` holds them stacked by view and ``images`` the first."""
    good = [it for it in items if it[0] is not None]
    skipped = [it[1] for it in items if it[0] is None]
    if not good:
        return Batch(torch.empty(0, 0, 0, 0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), skipped)
    texts = [it[2] for it in good] if len(good[0]) > 2 else None
    labels = torch.tensor([it[1] for it in good])
    if isinstance(good[0][0], list):
        crops = [torch.stack(views) for views in zip(*(it[0] for it in good))]
        return Batch(crops[0], labels, skipped, texts, crops=crops)
    return Batch(torch.stack([it[0] for it in good]), labels, skipped, texts)


def _texts(ds: TensorImages, idx: Iterable[int]) -> list[str] | None:
    """The captions of items ``idx`` of an in-memory set that has them."""
    texts = getattr(ds, "texts", None)
    return [texts[i] for i in idx] if texts else None


def mask_generator(seed: int, epoch: int, step: int, rank: int) -> torch.Generator:
    """The masks' random stream of one batch: a function of where the run is, so a resumed run draws the same."""
    return torch.Generator().manual_seed((((seed * 1_000_003 + epoch) * 1_000_003 + step) * 1024 + rank) % 2**63)


def global_masks(
    masks: MaskMaker, n: int, first: int, total: int, seed: int, epoch: int, step: int
) -> dict[str, torch.Tensor]:
    """The masks of samples ``first ... first + n - 1`` of a global batch of ``total``: made for the whole
    global batch and this part taken (a maker may stack ``k`` per sample, view by view, as ``[k * total, ...]``),
    so each sample's masks are the same however the batch is split over processes."""
    made = masks(total, mask_generator(seed, epoch, step, 0))
    return {k: m.unflatten(0, (-1, total))[:, first : first + n].flatten(0, 1) for k, m in made.items()}


@dataclass
class _Collate:
    """The collator of keyed items (see :class:`_Keyed`): stacks them, and makes the method's masks."""

    masks: MaskMaker | None
    seed: int
    epoch: int
    first: int  # where this process's part of a global batch begins
    total: int  # the global batch size

    def __call__(self, items: list) -> Batch:
        batch = collate([it[:-1] for it in items])
        if self.masks and len(batch.images):  # masks for the images that decoded
            batch.masks = global_masks(
                self.masks, len(batch.images), self.first, self.total, self.seed, self.epoch, items[0][-1]
            )
        return batch


class _Keyed(Dataset):
    """Files read by ``(step, index)``; each item carries its step, for the collator to seed the masks.
    With ``crops`` the items are random crops from the whole image, seeded by the sample's place in the run."""

    def __init__(self, ds: Dataset, crops: RandomCrops | None, seed: int, epoch: int):
        self.ds, self.crops, self.seed, self.epoch = ds, crops, seed, epoch

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int]) -> tuple:
        step, i = key
        if self.crops is None:
            return (*self.ds[i], step)
        return (*self.ds.item(i, self.crops, crop_generator(self.seed, self.epoch, i)), step)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def steps_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    return n // (batch_size * world)


def batches(
    ds: Dataset,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    start: int = 0,
    rank: int = 0,
    world: int = 1,
    workers: int = 0,
    masks: MaskMaker | None = None,
    views: Sequence[ViewConfig] | None = None,
) -> Iterator[Batch]:
    """Yield this rank's batches of ``epoch`` from step ``start`` on (the last partial batch is dropped).
    ``views``: files are cropped for them from the whole image as they are decoded (``Batch.crops``);
    images held in memory come whole, for :class:`~.views.Views` to crop on the device."""
    if hasattr(ds, "stream"):  # image shards, read as a stream
        yield from ds.stream(
            batch_size,
            seed=seed,
            epoch=epoch,
            start=start,
            rank=rank,
            world=world,
            workers=workers,
            masks=masks,
            views=views,
        )
        return
    order = epoch_order(len(ds), seed, epoch)
    global_batch = batch_size * world
    steps = range(start, steps_per_epoch(len(ds), batch_size, world))
    index_lists = [
        order[s * global_batch + rank * batch_size : s * global_batch + (rank + 1) * batch_size] for s in steps
    ]
    if isinstance(ds, TensorImages):  # in memory: slicing beats any worker pool
        for s, idx in zip(steps, index_lists):
            made = global_masks(masks, len(idx), rank * batch_size, global_batch, seed, epoch, s) if masks else {}
            yield Batch(ds.images[idx], ds.labels[idx], [], _texts(ds, idx.tolist()), made)
        return
    crops = RandomCrops(views, ds.channels) if views and hasattr(ds, "item") else None
    sampler = [[(s, i) for i in idx.tolist()] for s, idx in zip(steps, index_lists)]
    loader = DataLoader(
        _Keyed(ds, crops, seed, epoch),
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=_Collate(masks, seed, epoch, rank * batch_size, global_batch),
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
    yield from loader


def sequential(ds: Dataset, batch_size: int, workers: int = 0) -> Iterator[Batch]:
    """Every item once, in order (for feature extraction)."""
    if isinstance(ds, TensorImages):
        for s in range(0, len(ds), batch_size):
            texts = _texts(ds, range(s, min(s + batch_size, len(ds))))
            yield Batch(ds.images[s : s + batch_size], ds.labels[s : s + batch_size], [], texts)
        return
    yield from DataLoader(ds, batch_size=batch_size, num_workers=loader_workers(workers), collate_fn=collate)
