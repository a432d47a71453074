"""The emoji set: Google's Noto Color Emoji as the npm package ``emoji-datasource-google`` ships them
(MIT; the images Apache-2.0): 1,911 colour images of 64x64 px, each with a name, a category (the
label: 10 classes) and a subcategory (99); with ``skin_tones=True`` also the 1,875 skin-tone
variants (left out by default: they would make "People & Body" 60% of the set).

``emoji(split)`` gives the images; ``emoji_records(split)`` the names, categories and subcategories
(captions for image-text methods). The test split holds a fixed fifth of the emoji, chosen by a
hash of each emoji's code, so that an emoji and its skin tones always fall in the same split and an
emoji keeps its split when later versions of the package add others.

The files live in ``$FREELABEL_EMOJI`` or ``~/.cache/freelabel/emoji-datasource-google``;
``scripts/setup.sh`` puts them there with ``npm pack``, and so does the first use when npm exists.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import DataError
from ..files import atomic_folder
from .sources import TensorImages, cache_dir, load_image

log = logging.getLogger(__name__)

PACKAGE = "emoji-datasource-google"
IMAGES = "img/google/64"
_KEEP = ("emoji.json", "categories.json", "LICENSE", f"{IMAGES}/")
_TONES = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium", "1F3FE": "medium-dark", "1F3FF": "dark"}


@dataclass(frozen=True)
class Emoji:
    image: str  # file name under img/google/64
    name: str  # Unicode name, lower case: "father christmas"
    short_name: str  # "santa"
    category: str  # "Smileys & Emotion", ...: the label
    subcategory: str  # "face-smiling", ...
    skin_tone: str  # "" or e.g. "medium-dark skin tone" (two people: "light skin tone, dark skin tone")
    code: str  # the emoji's code point(s), shared by its skin tones: "1F385"


@dataclass
class EmojiImages(TensorImages):
    """The images, labels (category indices into ``classes``) and the record of every image."""

    records: list[Emoji] = field(default_factory=list)


def emoji_dir() -> Path:
    return Path(os.environ.get("FREELABEL_EMOJI", cache_dir() / PACKAGE))


def install(dest: Path | None = None) -> Path:
    """Fetch the package with ``npm pack`` and unpack its 64 px images and metadata into ``dest``."""
    dest = dest or emoji_dir()
    if shutil.which("npm") is None:
        raise DataError(
            f"the emoji set is not installed in {dest} and npm is missing to fetch it: install npm and "
            f"run scripts/setup.sh, or unpack `npm pack {PACKAGE}` there, or set FREELABEL_EMOJI"
        )
    log.info("fetching the emoji set with `npm pack %s` into %s", PACKAGE, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        try:
            subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=tmp, check=True, capture_output=True, timeout=900)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            raise DataError(f"`npm pack {PACKAGE}` failed ({e}); check the network, or set FREELABEL_EMOJI") from None
        with tarfile.open(next(Path(tmp).glob("*.tgz"))) as tar, atomic_folder(dest) as unpacked:
            members = []
            for m in tar.getmembers():
                m.name = m.name.removeprefix("package/")
                if m.isfile() and m.name.startswith(_KEEP):
                    members.append(m)
            tar.extractall(unpacked, members=members, filter="data")
    return dest


def _split_of(code: str) -> str:
    return "test" if zlib.crc32(code.encode()) % 5 == 0 else "train"


def emoji_records(split: str = "all", skin_tones: bool = False) -> list[Emoji]:
    """Every image of ``split`` (``train``, ``test`` or ``all``) with its name and categories."""
    if split not in ("train", "test", "all"):
        raise DataError(f"emoji has splits 'train', 'test' and 'all', not {split!r}")
    root = emoji_dir()
    if not (root / "emoji.json").is_file():
        install(root)
    records = []
    for e in json.loads((root / "emoji.json").read_text()):
        if not e.get("has_img_google") or split not in ("all", _split_of(e["unified"])):
            continue
        common = {
            "name": (e["name"] or e["short_name"]).lower(),
            "short_name": e["short_name"],
            "category": e["category"],
            "subcategory": e["subcategory"],
            "code": e["unified"],
        }
        records.append(Emoji(image=e["image"], skin_tone="", **common))
        for tones, v in (e.get("skin_variations") or {}).items() if skin_tones else ():
            if v.get("has_img_google"):
                tone = ", ".join(f"{_TONES[t]} skin tone" for t in tones.split("-"))
                records.append(Emoji(image=v["image"], skin_tone=tone, **common))
    return records


def emoji(split: str = "train", skin_tones: bool = False) -> EmojiImages:
    """The images of ``split`` as ``uint8 [N, 3, 64, 64]`` (transparency on white), labelled by category."""
    records = emoji_records(split, skin_tones)
    root = emoji_dir()
    classes = list(json.loads((root / "categories.json").read_text()))
    try:
        images = torch.stack([load_image(root / IMAGES / r.image, 64) for r in records])
    except OSError as e:
        raise DataError(f"the emoji set in {root} is incomplete ({e}); delete the folder to fetch it again") from None
    labels = torch.tensor([classes.index(r.category) for r in records])
    return EmojiImages(images, labels, classes, records=records)
