"""Safe image decoding: every image file freelabel reads goes through :func:`decode`.

An image file is hostile until decoded. Before any pixel is decoded the header's size is checked
against two limits, so that a small file cannot expand into gigabytes:

- ``max_pixels`` (default :data:`MAX_PIXELS`, 64 megapixels): width x height as it will be decoded.
  JPEGs are first drafted (decoded at 1/2, 1/4 or 1/8 scale by the codec) down to the size the
  caller needs, so a large photo read for a small view passes if its draft does;
- ``max_aspect`` (default :data:`MAX_ASPECT`, 20): the long side over the short side. A 100000 x 10
  strip is small, but resized by its short side it would be enormous.

A file over :data:`MAX_FILE_BYTES` (256 MiB) is not read at all.

Whatever a broken, truncated, mislabelled or crafted file raises (PIL's decompression-bomb error
and warning included) comes out as one :class:`BadImage`, for the caller to skip and count.
Only the formats of :data:`FORMATS` are opened, whatever the file's name says.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import DataError

MAX_PIXELS = 64_000_000
MAX_ASPECT = 20.0
MAX_FILE_BYTES = 256 * 2**20
FORMATS = ("PNG", "JPEG", "WEBP", "BMP")  # JPEG covers MPO, the multi-picture JPEG of cameras
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class BadImage(DataError):
    """A file that is not a decodable image within the limits; the message says why."""


def _open(src: str | os.PathLike | bytes | io.IOBase) -> Image.Image:
    if isinstance(src, (bytes, bytearray, memoryview)):
        size, src = len(src), io.BytesIO(bytes(src))
    elif not hasattr(src, "read"):
        path = Path(src)
        if not path.is_file():  # a folder, a FIFO, a device, a dangling or looping link
            raise BadImage("not a regular file")
        size, src = path.stat().st_size, path
    else:
        size = 0
    if size > MAX_FILE_BYTES:
        raise BadImage(
            f"{size / 2**20:.0f} MiB is over the limit of {MAX_FILE_BYTES / 2**20:.0f} MiB for one image file"
        )
    return Image.open(src, formats=FORMATS)


def _decoded(src, channels: int, max_pixels: int, max_aspect: float, draft_to: int | None) -> Image.Image:
    """The image in mode RGB or L, decoded within the limits (see :func:`decode`)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limits below are the ones that hold
            with _open(src) as img:
                w, h = img.size
                if min(w, h) < 1:
                    raise BadImage(f"empty image ({w}x{h})")
                if max(w, h) / min(w, h) > max_aspect:
                    raise BadImage(
                        f"aspect ratio {max(w, h) / min(w, h):.0f}:1 ({w}x{h}) is over the limit of {max_aspect:g}:1"
                    )
                if draft_to and img.format in ("JPEG", "MPO"):
                    scale = max(1, min(w, h) // draft_to)
                    img.draft("RGB" if channels == 3 else "L", (w // scale, h // scale))
                    w, h = img.size
                if w * h > max_pixels:
                    raise BadImage(f"{w}x{h} = {w * h / 1e6:.0f} megapixels is over the limit of {max_pixels / 1e6:g}")
                img.load()
                return _to_mode(ImageOps.exif_transpose(img), channels)
    except BadImage:
        raise
    except Exception as e:  # noqa: BLE001 - codecs raise anything on crafted input; all of it means "not an image"
        raise BadImage(f"{type(e).__name__}: {e}".splitlines()[0][:200]) from None


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """RGB (transparency composed on white) or L; 16/32-bit grey rescaled to 8 bits, not clipped."""
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        peak = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8))
    if channels == 3 and ("A" in img.mode or img.mode == "P" or "transparency" in img.info):
        img = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
    return img.convert("RGB" if channels == 3 else "L")


def _tensor(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def decode(
    src: str | os.PathLike | bytes | io.IOBase,
    *,
    channels: int = 3,
    max_pixels: int = MAX_PIXELS,
    max_aspect: float = MAX_ASPECT,
    draft_to: int | None = None,
) -> torch.Tensor:
    """An image file (path, bytes or binary file object) as ``uint8 [channels, H, W]``.

    ``channels`` is 3 (RGB; transparency is composed on white) or 1 (grey). ``draft_to``: the
    shorter side the caller will resize to; JPEGs are then decoded at the smallest codec scale that
    keeps at least that many pixels on the shorter side. EXIF orientation is applied.
    Raises :class:`BadImage` for anything that is not a decodable image within the limits.
    """
    return _tensor(_decoded(src, channels, max_pixels, max_aspect, draft_to))


def open_image(
    src: str | os.PathLike | bytes | io.IOBase,
    channels: int = 3,
    min_side: int | None = None,
    *,
    max_pixels: int = MAX_PIXELS,
    max_aspect: float = MAX_ASPECT,
) -> Image.Image:
    """:func:`decode` as a PIL image in mode RGB or L (``min_side`` is ``draft_to``), for callers that crop
    and resize in PIL (:mod:`freelabel.data.crops`)."""
    return _decoded(src, channels, max_pixels, max_aspect, min_side)


def load_image(
    src: str | os.PathLike | bytes | io.IOBase,
    size: int,
    channels: int = 3,
    *,
    max_pixels: int = MAX_PIXELS,
    max_aspect: float = MAX_ASPECT,
) -> torch.Tensor:
    """The centre square of an image file resized to ``uint8 [channels, size, size]`` (the shorter
    side to ``size``); decoded and checked as by :func:`decode`, raising :class:`BadImage`."""
    img = _decoded(src, channels, max_pixels, max_aspect, size)
    w, h = img.size
    s = min(w, h)
    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    return _tensor(img.resize((size, size), Image.BILINEAR, box=box, reducing_gap=3.0))
