"""Batches of ``uint8`` images in a seeded order that a run can resume from any step.

The order of epoch ``e`` is a permutation seeded by ``(seed, e)``; with ``world`` processes each
global batch of the order is cut into ``world`` contiguous slices, and process ``rank`` reads the
``rank``-th slice of each, so that with readable files ``world`` processes see together exactly the
batches one process would see with the global batch size. That per-process sequence is read in chunks
of a batch (decoded by the loader's workers), and :func:`full_batches` cuts the readable images into
batches:

    for chunk in this process's sequence, a batch's worth at a time:   # decoded in worker processes
        keep its readable images, count the files that failed
        while a batch's worth is kept: yield the first batch_size of them

so an unreadable file's place goes to the next readable image of the same order, every batch is full
while readable images remain, and the epoch ends when fewer than a batch are left. Where a batch ends in
the sequence (``Batch.index``) is all a run needs to resume exactly (``cursor``).

A ``masks`` maker (a method's, see :mod:`freelabel.data.masking`) is called once per batch, in the
collator (in the worker processes when there are any), with a generator seeded by the step the batch
makes in the run; what it returns travels with the batch as ``Batch.masks``.

Files are cropped for the method's views where they are decoded (:mod:`.crops`), each sample with a
generator seeded by ``(seed, epoch, index)``; image shards (:mod:`.shards`) stream their own chunks.
"""

from __future__ import annotations

import math
from collections import deque
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
    index: torch.Tensor | None = None  # int64 [B]: each image's place in this process's sequence of the epoch


MaskMaker = Callable[[int, torch.Generator], dict[str, torch.Tensor]]  # (batch size, generator) -> masks


def collate(items: list, places: Sequence[int] | None = None) -> Batch:
    """Stack decoded items; drop (and report) the ones that failed to decode. An item's image may be a
    list of crops, one per view: then ``crops`` holds them stacked by view and ``images`` the first.
    ``places``: each item's place in the epoch's sequence (``Batch.index`` of the ones kept)."""
    good = [i for i, it in enumerate(items) if it[0] is not None]
    skipped = [it[1] for it in items if it[0] is None]
    index = torch.tensor([places[i] for i in good], dtype=torch.long) if places is not None else None
    if not good:
        empty = torch.empty(0, 0, 0, 0, dtype=torch.uint8)
        return Batch(empty, torch.empty(0, dtype=torch.long), skipped, index=index)
    kept = [items[i] for i in good]
    texts = [it[2] for it in kept] if len(kept[0]) > 2 else None
    labels = torch.tensor([it[1] for it in kept])
    if isinstance(kept[0][0], list):
        crops = [torch.stack(views) for views in zip(*(it[0] for it in kept))]
        return Batch(crops[0], labels, skipped, texts, crops=crops, index=index)
    return Batch(torch.stack([it[0] for it in kept]), labels, skipped, texts, index=index)


def _select(batch: Batch, rows: torch.Tensor | slice) -> Batch:
    """Images ``rows`` of ``batch`` with their labels, captions, crops and places (not its masks)."""
    picked = torch.arange(len(batch.images))[rows].tolist()
    crops = [c[rows] for c in batch.crops] if batch.crops is not None else None
    return replace(
        batch,
        images=crops[0] if crops else batch.images[rows],  # with crops, the images are the first view's
        labels=batch.labels[rows] if batch.labels is not None else None,
        texts=[batch.texts[i] for i in picked] if batch.texts is not None else None,
        crops=crops,
        index=batch.index[rows] if batch.index is not None else None,
        masks={},
        skipped=[],
    )


def _cat(parts: list[Batch]) -> Batch:
    """Batches one after another (images, labels, captions, crops, places)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    crops = [torch.cat(views) for views in zip(*(p.crops for p in parts))] if first.crops is not None else None
    return replace(
        first,
        images=crops[0] if crops else torch.cat([p.images for p in parts]),
        labels=torch.cat([p.labels for p in parts]) if first.labels is not None else None,
        texts=[t for p in parts for t in p.texts] if first.texts is not None else None,
        crops=crops,
        index=torch.cat([p.index for p in parts]) if first.index is not None else None,
    )


def full_batches(
    chunks: Iterable[Batch], batch_size: int, cursor: int = 0, failed: Callable[[list[str]], None] | None = None
) -> Iterator[Batch]:
    """Batches of exactly ``batch_size`` readable images, in the order of the sequence, from place
    ``cursor`` on, out of chunks of it (each a batch's worth of places, minus the files that failed,
    which go to ``failed`` as each chunk arrives). The ``j``-th batch takes the masks of the ``j``-th
    chunk: made for its step, as masks depend on the step, not on the images."""
    pending: list[Batch] = []
    masks: deque[dict[str, torch.Tensor]] = deque()
    for chunk in chunks:
        masks.append(chunk.masks)
        if failed and chunk.skipped:
            failed(chunk.skipped)
        if len(chunk.images):
            keep = chunk.index >= cursor  # a resumed epoch: the first chunk began before the cursor
            pending.append(chunk if bool(keep.all()) else _select(chunk, keep))
        while sum(len(p.images) for p in pending) >= batch_size:
            if len(pending) == 1 and len(pending[0].images) == batch_size:  # a whole chunk read: as it is
                yield replace(pending.pop(), masks=masks.popleft(), skipped=[])
                continue
            whole = _cat(pending)
            yield replace(_select(whole, slice(0, batch_size)), masks=masks.popleft())
            rest = _select(whole, slice(batch_size, None))
            pending = [rest] if len(rest.images) else []


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
    """The collator of keyed items (see :class:`_Keyed`): stacks them, and makes the method's masks for
    the step its chunk stands for (a chunk's step: its number in the epoch, ``+ shift`` on resume)."""

    masks: MaskMaker | None
    seed: int
    epoch: int
    rank: int
    batch_size: int
    world: int
    shift: int

    def __call__(self, items: list) -> Batch:
        chunk = items[0][-2]
        batch = collate([it[:-2] for it in items], [it[-1] for it in items])
        if self.masks:
            b, step = self.batch_size, chunk + self.shift
            batch.masks = global_masks(self.masks, b, self.rank * b, b * self.world, self.seed, self.epoch, step)
        return batch


class _Keyed(Dataset):
    """Files read by ``(chunk, place, index)``; each item carries its chunk and place, for the collator.
    With ``crops`` the items are random crops from the whole image, seeded by the sample's place in the run."""

    def __init__(self, ds: Dataset, crops: RandomCrops | None, seed: int, epoch: int):
        self.ds, self.crops, self.seed, self.epoch = ds, crops, seed, epoch

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple:
        chunk, place, i = key
        if self.crops is None:
            return (*self.ds[i], chunk, place)
        return (*self.ds.item(i, self.crops, crop_generator(self.seed, self.epoch, i)), chunk, place)


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
    cursor: int | None = None,
    rank: int = 0,
    world: int = 1,
    workers: int = 0,
    masks: MaskMaker | None = None,
    views: Sequence[ViewConfig] | None = None,
    failed: Callable[[list[str]], None] | None = None,
) -> Iterator[Batch]:
    """Yield this rank's batches of ``epoch`` from step ``start`` on, each of ``batch_size`` readable
    images (see the module's loop); the paths of files that fail to decode go to ``failed``. ``cursor``: the place in this process's sequence where step ``start``
    begins (one past the last ``Batch.index`` of the step before); by default ``start * batch_size``,
    where it is when every file reads. ``views``: files are cropped for them from the whole image as
    they are decoded (``Batch.crops``); images held in memory come whole, for :class:`~.views.Views`
    to crop on the device."""
    cursor = start * batch_size if cursor is None else cursor
    first = cursor // batch_size  # the chunk that holds the cursor; it stands for step ``start``
    where = {"seed": seed, "epoch": epoch, "rank": rank, "world": world, "masks": masks}
    if hasattr(ds, "stream"):  # image shards, read as a stream
        chunks = ds.stream(batch_size, first=first, shift=start - first, workers=workers, views=views, **where)
    else:
        chunks = _chunks(ds, batch_size, first, start - first, workers, views, **where)
    yield from full_batches(chunks, batch_size, cursor, failed)


def _chunks(
    ds: Dataset,
    batch_size: int,
    first: int,
    shift: int,
    workers: int,
    views: Sequence[ViewConfig] | None,
    *,
    seed: int,
    epoch: int,
    rank: int,
    world: int,
    masks: MaskMaker | None,
) -> Iterator[Batch]:
    """This process's sequence of ``epoch`` from chunk ``first`` on, a batch's worth of places at a time."""
    order = epoch_order(len(ds), seed, epoch)
    global_batch = batch_size * world
    last = math.ceil(len(ds) / global_batch)  # chunks in the epoch, the last one maybe short (or empty here)
    parts = [(c, order[c * global_batch + rank * batch_size :][:batch_size]) for c in range(first, last)]
    parts = [(c, idx) for c, idx in parts if len(idx)]
    if isinstance(ds, TensorImages):  # in memory: slicing beats any worker pool, and every image reads
        for c, idx in parts:
            step, places = c + shift, torch.arange(c * batch_size, c * batch_size + len(idx))
            made = global_masks(masks, batch_size, rank * batch_size, global_batch, seed, epoch, step) if masks else {}
            yield Batch(ds.images[idx], ds.labels[idx], [], _texts(ds, idx.tolist()), made, index=places)
        return
    crops = RandomCrops(views, ds.channels) if views and hasattr(ds, "item") else None
    sampler = [[(c, c * batch_size + j, i) for j, i in enumerate(idx.tolist())] for c, idx in parts]
    yield from DataLoader(
        _Keyed(ds, crops, seed, epoch),
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=_Collate(masks, seed, epoch, rank, batch_size, world, shift),
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )


def sequential(ds: Dataset, batch_size: int, workers: int = 0) -> Iterator[Batch]:
    """Every item once, in order (for feature extraction); ``Batch.index``: the items' places in ``ds``
    (those of unreadable files are missing)."""
    if isinstance(ds, TensorImages):
        for s in range(0, len(ds), batch_size):
            texts = _texts(ds, range(s, min(s + batch_size, len(ds))))
            places = torch.arange(s, min(s + batch_size, len(ds)))
            yield Batch(ds.images[s : s + batch_size], ds.labels[s : s + batch_size], [], texts, index=places)
        return
    loader = DataLoader(
        _Placed(ds), batch_size=batch_size, num_workers=loader_workers(workers), collate_fn=_collate_placed
    )
    yield from loader


class _Placed(Dataset):
    """Items that carry their place in ``ds``."""

    def __init__(self, ds: Dataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple:
        return (*self.ds[i], i)


def _collate_placed(items: list) -> Batch:
    return collate([it[:-1] for it in items], [it[-1] for it in items])
