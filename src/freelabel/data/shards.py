"""Image shards: WebDataset tar files of images, with a class label (``cls``) and/or a caption
(``txt``) when the source has them, streamed rather than held in memory.

:func:`make_shards` writes them, in parallel, from any image folder (class sub-folders become
labels) or caption data (a CSV/JSONL of image,caption, or a folder with a ``.txt`` beside each
image), in a seeded shuffled order, with ``shards.json`` beside them: the classes and each shard's
count of samples (and of held-out ones). Shards made elsewhere are counted by reading their tar
headers once.

:class:`ImageShards` reads them. Pretraining streams them (:meth:`ImageShards.stream`): each epoch
the shards are shuffled, the sample sequence is cut into equal contiguous parts, one per process
and, inside it, one per loader worker, and each part is read in windows of ``buffer`` samples that
are shuffled (a shuffle buffer whose order is a function of where it is, so that a run resumes at
any step exactly). Every sample is seen once per epoch across all processes (bar the last partial
global batch), every process takes the same number of steps, and memory holds one window per
worker whatever the number of shards. Evaluation reads them once in order (``iter``).

Splits, as for caption data: ``test`` holds the samples whose key hashes to 0 mod 5, ``train`` the
rest, ``all`` everything.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import random
import tarfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import UnidentifiedImageError
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import DataError
from ..files import atomic_folder
from .captions import held_out, is_captioned, read_pairs, sample_key
from .crops import RandomCrops, crop_generator
from .images import BadImage, decode
from .loader import Batch, MaskMaker, collate, mask_generator
from .sources import IMAGE_EXTENSIONS, load_image, scan_folder
from .views import ViewConfig

INDEX = "shards.json"
log = logging.getLogger("freelabel")
_BAD = (OSError, UnidentifiedImageError, ValueError, SyntaxError)


def _in_split(key: str, split: str) -> bool:
    return split == "all" or held_out(key) == (split == "test")


def is_shards(spec: str) -> bool:
    """Whether ``--data spec`` names WebDataset shards: a ``.tar``, a brace pattern of them, or a folder of them."""
    path = Path(spec).expanduser()
    return spec.endswith(".tar") or path.is_dir() and any(path.glob("*.tar"))


def shard_urls(spec: str) -> list[str]:
    """The tar files a shard spec names: one file, a folder of them, or a brace pattern."""
    import braceexpand

    path = Path(spec).expanduser()
    urls = sorted(map(str, path.glob("*.tar"))) if path.is_dir() else list(braceexpand.braceexpand(str(path)))
    missing = [u for u in urls if not Path(u).is_file()]
    if not urls or missing:
        raise DataError(
            f"no WebDataset shards at {missing[0] if missing else spec}; make them with `freelabel shards make`"
        )
    return urls


def _key(name: str) -> str | None:
    """A tar member's sample key (WebDataset's: the path up to the first dot of the file name)."""
    folder, _, base = name.rpartition("/")
    return f"{folder}/{base.split('.', 1)[0]}" if folder else base.split(".", 1)[0]


def _count(url: str) -> dict:
    """A shard's entry of the index, from its tar headers: samples, held-out samples, and what they hold."""
    keys, suffixes = [], set()
    with tarfile.open(url, "r|*") as tar:
        for member in tar:
            if member.isreg() and not member.name.startswith("__"):
                key = _key(member.name)
                suffixes.add(member.name[len(key) + 1 :].lower())
                if not keys or keys[-1] != key:
                    keys.append(key)
    return {
        "name": Path(url).name,
        "samples": len(keys),
        "held_out": sum(map(held_out, keys)),
        "captions": "txt" in suffixes,
        "labels": "cls" in suffixes,
    }


@dataclass
class _Shard:
    url: str
    samples: int  # in the split


class ImageShards(IterableDataset):
    """WebDataset shards as a data set: ``len``, ``classes``, ``channels``; items ``(image, label)``
    or ``(image, label, caption)`` when iterated (in order, for evaluation); batches for training
    from :meth:`stream`."""

    def __init__(self, spec: str, split: str, size: int, channels: int = 3, buffer: int = 1000):
        if split not in ("train", "test", "all"):
            raise DataError(f"shards have splits 'train', 'test' and 'all', not {split!r}")
        urls = shard_urls(spec)
        index_path = Path(urls[0]).parent / INDEX
        index = json.loads(index_path.read_text()) if index_path.is_file() else {}
        known = {s["name"]: s for s in index.get("shards", [])}
        entries = [known.get(Path(u).name) or _count(u) for u in urls]
        split_count = {
            "all": lambda e: e["samples"],
            "test": lambda e: e["held_out"],
            "train": lambda e: e["samples"] - e["held_out"],
        }[split]
        self.shards = [_Shard(u, split_count(e)) for u, e in zip(urls, entries)]
        self.spec, self.split, self.size, self.channels, self.buffer = spec, split, size, channels, buffer
        self.classes: list[str] = index.get("classes", [])
        self.captions = any(e.get("captions", False) for e in entries)
        if len(self) == 0:
            raise DataError(f"the shards at {spec} hold no samples in split {split!r}")

    def __len__(self) -> int:
        return sum(s.samples for s in self.shards)

    def _samples(self, shards: Sequence[_Shard], skip: int = 0) -> Iterator[dict]:
        """The split's samples of ``shards`` in order, raw (bytes), after the first ``skip``."""
        from webdataset.tariterators import group_by_keys, tar_file_expander

        for shard in shards:
            if skip >= shard.samples:  # skipped whole, unopened
                skip -= shard.samples
                continue
            with open(shard.url, "rb") as f:
                for sample in group_by_keys(tar_file_expander([{"url": shard.url, "stream": f}])):
                    if _in_split(sample["__key__"], self.split):
                        if skip:
                            skip -= 1
                        else:
                            yield sample

    def _item(self, sample: dict, crops: RandomCrops | None = None, g: torch.Generator | None = None) -> tuple:
        """A raw sample as ``(image or crops, label[, caption])``, or ``(None, where)`` when it cannot be read."""
        ext = next((e for e in sample if "." + e in IMAGE_EXTENSIONS), None)
        where = f"{sample['__url__']}:{sample['__key__']}"
        if ext is None:
            return None, where
        try:
            src = io.BytesIO(sample[ext])
            image = crops.read(src, g) if crops else load_image(src, self.size, self.channels)
        except _BAD:
            return None, where
        label = int(sample["cls"]) if "cls" in sample else -1
        return (image, label, sample["txt"].decode("utf-8").strip()) if self.captions else (image, label)

    def __iter__(self) -> Iterator[tuple]:
        """Every item of the split once, in shard order (split between loader workers by shard)."""
        info = get_worker_info()
        shards = self.shards[info.id :: info.num_workers] if info else self.shards
        for sample in self._samples(shards):
            yield self._item(sample)

    def stream(
        self,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        first: int = 0,
        shift: int = 0,
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
        masks: MaskMaker | None = None,
        views: Sequence[ViewConfig] | None = None,
    ) -> Iterator[Batch]:
        """This process's sequence of ``epoch`` from chunk ``first`` on, a batch's worth at a time, for
        :func:`~.loader.batches` to cut into full batches; chunk ``c`` carries the masks of step ``c + shift``."""
        plan = _Plan(
            self,
            batch_size,
            seed,
            epoch,
            rank,
            world,
            max(1, workers),
            first,
            shift,
            masks,
            RandomCrops(views, self.channels) if views else None,
        )
        if plan.steps <= first:
            return
        loader = DataLoader(
            plan, batch_size=None, num_workers=min(workers, plan.roles), prefetch_factor=2 if workers else None
        )
        yield from loader


class _Plan(IterableDataset):
    """One epoch of one process: which samples make each chunk, and the loader worker that reads them.

    The epoch's sequence is the split's samples of the shards in a seeded order. Process ``rank``
    takes the ``rank``-th of ``world`` equal contiguous parts of it (``steps`` chunks of a batch), and
    cuts its part again into ``roles`` contiguous runs, one per loader worker: run ``w`` makes chunks
    ``w``, ``w + roles``, ... Each run is read in windows of ``buffer`` samples, each shuffled by a
    generator seeded by its place. On resume from chunk ``start`` the workers swap runs so that the
    loader's round-robin still yields chunks in order."""

    def __init__(
        self,
        shards: ImageShards,
        batch_size: int,
        seed: int,
        epoch: int,
        rank: int,
        world: int,
        roles: int,
        start: int,
        shift: int,
        masks: MaskMaker | None,
        crops: RandomCrops | None,
    ):
        self.ds, self.b, self.seed, self.epoch, self.rank = shards, batch_size, seed, epoch, rank
        self.start, self.shift, self.masks, self.crops = start, shift, masks, crops
        self.steps = len(shards) // (batch_size * world)
        self.roles = max(1, min(roles, self.steps))
        order = torch.randperm(len(shards.shards), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        self.order = [shards.shards[i] for i in order.tolist()]
        self.first = rank * self.steps * batch_size  # where this process's part begins in the sequence

    def run(self, role: int) -> tuple[int, list[int]]:
        """Where run ``role`` begins in the sequence, and the steps it makes."""
        before = sum(len(range(w, self.steps, self.roles)) for w in range(role))
        return self.first + before * self.b, list(range(role, self.steps, self.roles))

    def batches(self, role: int) -> Iterator[Batch]:
        begin, steps = self.run(role)
        done = len([s for s in steps if s < self.start])
        window = max(self.b, self.buffer_size)
        pos = done * self.b // window * window  # the window to begin reading at, within the run
        samples = self.ds._samples(self.order, skip=begin + pos)
        pending: list[dict] = []
        for k, step in enumerate(steps):
            if k < done:
                continue
            at = k * self.b  # this batch's place in the run
            while pos + len(pending) < at + self.b or not pending:  # read the window holding it
                pos += len(pending)
                size = min(window, len(steps) * self.b - pos)
                raw = list(itertools.islice(samples, size))
                if len(raw) < size:
                    raise DataError(
                        f"the shards at {self.ds.spec} hold fewer samples than {INDEX} counts; "
                        f"delete it to have them counted again"
                    )
                g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_003 + begin + pos)
                pending = [raw[i] for i in torch.randperm(size, generator=g).tolist()]
            picked = pending[at - pos : at - pos + self.b]
            items = [
                self.ds._item(
                    s, self.crops, crop_generator(self.seed, self.epoch, f"{Path(s['__url__']).name}/{s['__key__']}")
                )
                for s in picked
            ]
            batch = collate(items, range(step * self.b, (step + 1) * self.b))
            if self.masks:
                g = mask_generator(self.seed, self.epoch, step + self.shift, self.rank)
                batch.masks = self.masks(self.b, g)
            yield batch

    @property
    def buffer_size(self) -> int:
        return self.ds.buffer // self.b * self.b  # whole batches

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if workers == 1:  # one reader makes every run's steps, in step order
            runs = [self.batches(r) for r in range(self.roles)]
            for s in range(self.start, self.steps):
                yield next(runs[s % self.roles])
            return
        yield from self.batches((worker + self.start) % self.roles)


# ---------------------------------------------------------------------------------- writing shards
def _records(src: str, allow_outside: bool = False) -> tuple[list[tuple[Path, int, str | None]], list[str]]:
    """(image path, label, caption or None) of every image of ``src``, and the class names; a caption
    list's images must lie in its folder unless ``allow_outside``."""
    root = Path(src).expanduser()
    if is_captioned(src) and not is_shards(src):
        pairs = read_pairs(src, allow_outside)
        folder_of = {p: p.relative_to(root).parts[0] for p, _ in pairs if root.is_dir() and p.parent != root}
        classes = sorted(set(folder_of.values())) if len(folder_of) == len(pairs) else []
        return [(p, classes.index(folder_of[p]) if classes else -1, t) for p, t in pairs], classes
    paths, labels, classes, _ = scan_folder(root)
    return [(p, label, None) for p, label in zip(paths, labels)], classes


def _write_shard(job: tuple[str, list[tuple[str, str, int, str | None]]]) -> dict:
    """Write one shard (each image file as it is, ``cls`` and ``txt`` where known); its index entry."""
    import webdataset as wds

    path, samples = job
    with wds.TarWriter(path) as sink:
        for key, file, label, text in samples:
            ext = Path(file).suffix.lower().lstrip(".").replace("jpeg", "jpg")
            sample = {"__key__": key, ext: Path(file).read_bytes()}
            if label >= 0:
                sample["cls"] = str(label)
            if text is not None:
                sample["txt"] = text
            sink.write(sample)
    return {
        "name": Path(path).name,
        "samples": len(samples),
        "held_out": sum(held_out(s[0]) for s in samples),
        "captions": samples[0][3] is not None,
        "labels": samples[0][2] >= 0,
    }


def make_shards(
    src: str,
    out: str | Path,
    per_shard: int = 1000,
    workers: int | None = None,
    seed: int = 0,
    allow_outside: bool = False,
) -> list[Path]:
    """Write the images of ``src`` (an image folder, or caption data) as WebDataset shards
    ``out/shard-000000.tar``, ... of ``per_shard`` samples in a seeded shuffled order, by ``workers``
    processes (default: the cores available), and ``out/shards.json``, into a new or empty folder ``out``
    that appears whole, shards and index, once all are written (:func:`freelabel.files.atomic_folder`). Only files that decode as images are packed; the others are skipped and counted (in
    the log). A caption list's images must lie in its folder unless ``allow_outside``."""
    if per_shard < 1:
        raise DataError(f"--per-shard must be at least 1, got {per_shard}")
    records, classes = _records(src, allow_outside)
    out = Path(out)
    if out.is_dir() and any(out.glob("shard-*.tar")):
        raise DataError(f"{out} already holds shards; choose another output folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} is not a new or empty folder; shards go into a folder of their own")
    for path, _, _ in records:
        if not path.exists():
            raise DataError(f"{path} (listed in {src}) does not exist")
    readable, skipped = [], []
    for record in records:  # a regular file, small enough, that decodes: only then is it packed
        try:
            decode(record[0], draft_to=1)
            readable.append(record)
        except BadImage as e:
            skipped.append(f"{record[0]} ({e})")
    if not readable:
        raise DataError(f"none of the {len(records)} images of {src} could be read, e.g. {skipped[0]}")
    if skipped:
        log.warning("skipped %d unreadable files, e.g. %s", len(skipped), skipped[0])
    records = readable
    random.Random(seed).shuffle(records)
    seen: set[str] = set()
    samples = []
    for i, (path, label, text) in enumerate(records):
        key = sample_key(path) if sample_key(path) not in seen else f"{sample_key(path)}_{i}"
        seen.add(key)
        samples.append((key, str(path), label, text))
    workers = workers or len(os.sched_getaffinity(0))
    with atomic_folder(out) as tmp:
        jobs = [
            (os.path.join(tmp, f"shard-{i // per_shard:06d}.tar"), samples[i : i + per_shard])
            for i in range(0, len(samples), per_shard)
        ]
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
                entries = list(pool.map(_write_shard, jobs))
        else:
            entries = [_write_shard(job) for job in jobs]
        (tmp / INDEX).write_text(json.dumps({"classes": classes, "shards": entries}, indent=1))
    return [out / e["name"] for e in entries]
