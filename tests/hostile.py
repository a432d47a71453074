"""A hostile-input corpus, made on the spot: image bombs (by pixels and by aspect), every kind of broken
file, non-UTF-8 names, caption lists, and training folders laid out in the seeded order of
:func:`freelabel.data.loader.epoch_order`: the first batch's worth all broken, the second with one good
image (:func:`training_folder`), or 4 good images among 12 at batch 2 (:data:`SPARSE`)."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

BATCH = 4  # the batch size the corpus' training folders are laid out for (3 batches of 4 in epoch 0, seed 0)
# 12 files of which 4 are good, at batch 2: epoch 0 reads [broken broken] [broken good] [broken broken] [good ...
SPARSE = {"batch": 2, "good": (3, 6, 9, 11)}  # places of the good files in epoch 0's order


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def grey_png_bomb(width: int, height: int) -> bytes:
    """A valid PNG of zeros, ``width x height`` 8-bit grey, that is a few hundred kB on disk."""
    z = zlib.compressobj(9)
    rows = (b"\0" * (width + 1)) * 500
    idat = b"".join(z.compress(rows) for _ in range(height // 500)) + z.compress(b"\0" * (width + 1) * (height % 500))
    idat += z.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def good_image(i: int, size: int = 24) -> bytes:
    rng = np.random.default_rng(i)
    x = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    x[: size // 2] //= 2 + i % 3  # some structure, so that views differ
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="PNG")
    return buf.getvalue()


def broken_files() -> dict[str, bytes]:
    """One file of each broken kind, by name (all with image extensions)."""
    good = good_image(0)
    gif, tiff, jpeg = io.BytesIO(), io.BytesIO(), io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    Image.new("RGB", (8, 8)).save(tiff, format="TIFF")
    Image.new("L", (2, 40000)).save(jpeg, format="JPEG")
    return {
        "bomb_pixels.png": BOMBS["pixels"],  # 20000 x 20000: over PIL's own bomb limit too
        "bomb_under_pil_limit.png": BOMBS["under_pil"],  # 9000 x 9000: under PIL's limit, over freelabel's
        "bomb_aspect.png": _png(Image.new("L", (60000, 2))),  # tiny, but 30000:1
        "bomb_aspect.jpg": jpeg.getvalue(),  # 1:20000 as a JPEG
        "truncated.png": good[: len(good) // 2],
        "text.png": b"this is text, not a PNG",
        "empty.webp": b"",
        "gif_named.png": gif.getvalue(),  # a format freelabel does not open, whatever the name says
        "tiff_named.jpg": tiff.getvalue(),
        "header_only.bmp": b"BM" + b"\xff" * 60,
    }


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class _Bombs(dict):
    """The two bombs, made once (the large one takes a few seconds to compress)."""

    def __missing__(self, key: str) -> bytes:
        self[key] = grey_png_bomb(20000, 20000) if key == "pixels" else grey_png_bomb(9000, 9000)
        return self[key]


BOMBS = _Bombs()
NON_UTF8 = os.fsdecode(b"caf\xe9-\xff")  # a name that is not UTF-8, as Python reads it from the disk


def batch_layout(n: int = 3 * BATCH, seed: int = 0, places: tuple[int, ...] | None = None) -> list[bool]:
    """Which of ``n`` sorted files must be good so that the good ones stand at ``places`` of epoch 0's order
    (by default: one in the second batch of BATCH, all of the third)."""
    from freelabel.data.loader import epoch_order

    order = epoch_order(n, seed, 0).tolist()
    good = [False] * n
    for pos in places or [BATCH] + list(range(2 * BATCH, 3 * BATCH)):
        good[order[pos]] = True
    return good


def training_folder(root: Path, places: tuple[int, ...] | None = None) -> Path:
    """12 files, sorted by name as the loader reads them: batch 0 all broken, batch 1 one good image,
    batch 2 all good (one with a non-UTF-8 name); or good at ``places`` of epoch 0's order."""
    root.mkdir(parents=True)
    broken = iter(broken_files().items())
    layout = batch_layout(places=places)
    for i, good in enumerate(layout):
        if good:
            name = f"{i:02d}-{NON_UTF8}.png" if i == layout.index(True) else f"{i:02d}-good.png"
            (root / name).write_bytes(good_image(i))
        else:
            kind, data = next(broken)
            (root / f"{i:02d}-{kind}").write_bytes(data)
    return root


def caption_list(root: Path, places: tuple[int, ...] | None = None) -> Path:
    """A CSV of 12 image-caption pairs laid out like :func:`training_folder` (every key in the train split)."""
    from freelabel.data.captions import held_out, sample_key

    root.mkdir(parents=True)
    broken = iter(broken_files().items())
    rows, i = [], 0
    for good in batch_layout(places=places):
        kind, data = ("png", None) if good else next(broken)
        while True:  # a name whose key falls in the train split
            path = f"img{i:03d}.png" if good else f"img{i:03d}-{kind}"
            i += 1
            if not held_out(sample_key(Path(path))):
                break
        (root / path).write_bytes(good_image(i) if good else data)
        rows.append(f"{path},a picture number {i}")
    (root / "pairs.csv").write_text("image,caption\n" + "\n".join(rows) + "\n")
    return root / "pairs.csv"


def odd_entries(root: Path) -> None:
    """Things with image names that are not image files: a folder, a symlink loop, a dangling link, a FIFO."""
    (root / "folder.png").mkdir()
    os.symlink(root / "loop.png", root / "loop.png")
    os.symlink(root / "nowhere.png", root / "dangling.png")
    os.mkfifo(root / "fifo.png")
