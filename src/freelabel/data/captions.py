"""Image-caption pairs for language-image pretraining (CLIP, SigLIP, LiT).

Sources, all giving items ``(image uint8 [C, S, S], -1, caption)``:

- a CSV or JSONL file with an image path (column ``image``, ``path``, ``file`` or ``filepath``;
  relative to the file) and a caption (``caption``, ``text`` or ``title``) per row;
- a folder with a ``.txt`` caption beside each image (``cat.png`` + ``cat.txt``);
- WebDataset tar shards (image + ``txt`` per sample): one ``.tar``, a brace pattern
  (``shards/s-{000000..000009}.tar``) or a folder of ``.tar`` files, streamed (:mod:`.shards`, whose
  ``make_shards`` writes them from any of the sources above);
- ``emoji-captions``: the emoji set (:mod:`.emoji`) captioned by name, "an emoji of grinning face",
  split by emoji like ``emoji``, with the categories and subcategories as zero-shot label sets.

Splits: ``emoji-captions`` keeps the emoji set's held-out fifth; other sources hold out the fifth of
pairs whose image name hashes to 0 mod 5 (``test``); ``all`` is everything.
"""

from __future__ import annotations

import csv
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import DataError
from .emoji import emoji, emoji_records
from .sources import IMAGE_EXTENSIONS, ImageFiles, TensorImages

CAPTIONED = {"emoji-captions": "the emoji set captioned by name ('an emoji of grinning face'), split by emoji"}
IMAGE_KEYS, CAPTION_KEYS = ("image", "path", "file", "filepath"), ("caption", "text", "title")


class CaptionFiles(ImageFiles):
    """Captioned image files, decoded lazily like :class:`ImageFiles`; a captioned folder with one
    sub-folder per class is also labelled (for zero-shot evaluation by class names)."""

    def __init__(
        self,
        paths: list[Path],
        texts: list[str],
        size: int,
        channels: int = 3,
        labels: list[int] | None = None,
        classes: list[str] | None = None,
    ):
        super().__init__(paths, labels or [-1] * len(paths), classes or [], size, channels)
        self.texts = texts

    def item(self, i: int, crops=None, g: torch.Generator | None = None) -> tuple:
        image, label = super().item(i, crops, g)
        return (image, label) if image is None else (image, label, self.texts[i])


@dataclass
class CaptionImages(TensorImages):
    """Captioned images held in memory; ``label_sets`` names class lists for zero-shot evaluation:
    ``{"category": (class names, labels [N])}``."""

    texts: list[str] = field(default_factory=list)
    label_sets: dict[str, tuple[list[str], torch.Tensor]] = field(default_factory=dict)


def is_captioned(spec: str) -> bool:
    """Whether ``--data spec`` names caption data rather than plain images."""
    if spec in CAPTIONED:
        return True
    path = Path(spec).expanduser()
    if path.suffix.lower() in (".csv", ".jsonl", ".tar") or ("{" in spec and spec.endswith(".tar")):
        return True
    return path.is_dir() and (any(path.glob("*.tar")) or any(path.rglob("*.txt")) and bool(_caption_files(path)[0]))


def sample_key(path: Path) -> str:
    """A pair's key (its image's name without extension, no dots): it decides the split, and
    ``make_shards`` writes it as the sample's WebDataset key, so shards keep their source's split."""
    return path.stem.replace(".", "_")


def held_out(key: str) -> bool:
    return zlib.crc32(key.encode()) % 5 == 0


def _keep(key: str, split: str) -> bool:
    if split not in ("train", "test", "all"):
        raise DataError(f"caption data has splits 'train', 'test' and 'all', not {split!r}")
    return split == "all" or held_out(key) == (split == "test")


def _pick(row: dict, keys: tuple[str, ...], where: str) -> str:
    for k in keys:
        if row.get(k) not in (None, ""):
            return str(row[k])
    raise DataError(f"{where} has no {keys[0]!r} value; name the column one of: {', '.join(keys)}")


def _listed_path(table: Path, value: str, where: str, allow_outside: bool) -> Path:
    """The image a caption list names: relative to the list's folder, inside it (unless
    ``allow_outside``), and with an image extension."""
    path = table.parent / value
    suffix = Path(value).suffix.lower()
    if not suffix:
        raise DataError(f"{where}: {value!r} has no file extension; name an image file ({'/'.join(IMAGE_EXTENSIONS)})")
    if suffix not in IMAGE_EXTENSIONS:
        raise DataError(f"{where}: {value!r} is not an image file; only {'/'.join(IMAGE_EXTENSIONS)} are read")
    if not allow_outside:
        folder = table.parent.resolve()
        try:
            path.resolve().relative_to(folder)
        except ValueError:
            raise DataError(
                f"{where}: {value!r} is outside {folder}, the folder of the list; move the image there, "
                "or allow such paths explicitly (--allow-outside, data.allow_outside=true)"
            ) from None
    return path


def _read_table(path: Path, allow_outside: bool = False) -> list[tuple[Path, str]]:
    """(image path, caption) of every row of a CSV or JSONL file."""
    if not path.is_file():
        raise DataError(f"caption file {path} does not exist")
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                rows = [(f"{path.name} row {i + 2}", r) for i, r in enumerate(csv.DictReader(f))]
        else:
            rows = []
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
                if line.strip():
                    try:
                        rows.append((f"{path.name} line {i + 1}", json.loads(line)))
                    except (json.JSONDecodeError, RecursionError) as e:
                        raise DataError(f"{path.name} line {i + 1} is not JSON ({e})") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path} is not a UTF-8 CSV/JSONL file ({e})") from None
    bad = next((w for w, r in rows if not isinstance(r, dict)), None)
    if bad:
        raise DataError(f"{bad} is not a JSON object with an image and a caption")
    pairs = [
        (_listed_path(path, _pick(r, IMAGE_KEYS, w), w, allow_outside), _pick(r, CAPTION_KEYS, w)) for w, r in rows
    ]
    if not pairs:
        raise DataError(f"{path} holds no image-caption pairs")
    return pairs


def _caption_files(root: Path) -> tuple[list[Path], list[Path]]:
    """Images under ``root`` with a ``.txt`` beside them, and those without."""
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    with_text = [p for p in images if p.with_suffix(".txt").is_file()]
    return with_text, [p for p in images if not p.with_suffix(".txt").is_file()]


def _read_folder(root: Path) -> list[tuple[Path, str]]:
    found, missing = _caption_files(root)
    if missing:
        raise DataError(
            f"{len(missing)} images under {root} have no caption beside them, e.g. {missing[0]} needs "
            f"{missing[0].with_suffix('.txt').name}"
        )
    return [(p, p.with_suffix(".txt").read_text(encoding="utf-8", errors="replace").strip()) for p in found]


def read_pairs(spec: str, allow_outside: bool = False) -> list[tuple[Path, str]]:
    """(image path, caption) pairs of a CSV/JSONL file or a captioned folder. The images a file
    lists must lie in its folder unless ``allow_outside``."""
    path = Path(spec).expanduser()
    if path.suffix.lower() in (".csv", ".jsonl"):
        return _read_table(path, allow_outside)
    if path.is_dir():
        return _read_folder(path)
    raise DataError(
        f"{spec} is not caption data: give a .csv or .jsonl file, a folder with a .txt beside each "
        "image, WebDataset .tar shards, or emoji-captions"
    )


def emoji_captions(split: str) -> CaptionImages:
    """The emoji set with the caption "an emoji of NAME" per image, and its category and subcategory
    label sets (names with hyphens as spaces: "face smiling")."""
    ds = emoji(split)
    every = emoji_records("all")
    sets = {}
    for attr in ("category", "subcategory"):
        names = sorted({getattr(r, attr) for r in every})
        labels = torch.tensor([names.index(getattr(r, attr)) for r in ds.records])
        sets[attr] = ([n.replace("-", " ") for n in names], labels)
    return CaptionImages(
        ds.images, ds.labels, ds.classes, texts=[f"an emoji of {r.name}" for r in ds.records], label_sets=sets
    )


def open_captions(spec: str, split: str, size: int | None, channels: int = 3, allow_outside: bool = False):
    """Caption data (see the module) as a dataset of ``(image, -1, caption)`` items; the images of a
    CSV/JSONL list must lie in its folder unless ``allow_outside``."""
    if size is None:
        raise DataError("caption data needs an image size (data.image_size or views.size in the recipe)")
    every, root = read_pairs(spec, allow_outside), Path(spec).expanduser()
    folder_of = {p: p.relative_to(root).parts[0] for p, _ in every if root.is_dir() and p.parent != root}
    classes = sorted(set(folder_of.values())) if len(folder_of) == len(every) else []  # class sub-folders
    pairs = [(p, t) for p, t in every if _keep(sample_key(p), split)]
    if not pairs:
        raise DataError(f"{spec} has no image-caption pairs in split {split!r}")
    labels = [classes.index(folder_of[p]) for p, _ in pairs] if classes else None
    return CaptionFiles([p for p, _ in pairs], [t for _, t in pairs], size, channels, labels, classes)
