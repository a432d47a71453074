"""Random-resized crops from the whole image: where the boxes land, what is decoded, and that files
give the same crops again at any point of a run."""

import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from skimage import data

from freelabel.data.crops import RandomCrops, crop_box, crop_generator, decode_side, resized_crop
from freelabel.data.images import open_image as decode
from freelabel.data.loader import batches
from freelabel.data.sources import image_folder
from freelabel.data.views import ViewConfig


def _coordinates(width: int, height: int) -> Image.Image:
    """An image whose red channel is the column and green the row (scaled to 0..255)."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.dstack([x, y, np.zeros_like(x)]).round().astype(np.uint8))


@pytest.mark.parametrize("width, height", [(600, 200), (150, 450)])
def test_a_box_lands_where_it_says_at_the_aspect_it_says(width, height):
    img, g = _coordinates(width, height), torch.Generator().manual_seed(0)
    for _ in range(20):
        left, top, w, h = crop_box(g, width, height, (0.1, 0.6), (3 / 4, 4 / 3))
        assert 0 <= left and left + w <= width + 1e-6 and 0 <= top and top + h <= height + 1e-6
        assert 0.1 - 1e-6 <= w * h / (width * height) <= 0.6 + 1e-6 and 3 / 4 - 1e-6 <= w / h <= 4 / 3 + 1e-6
        crop = resized_crop(img, (left, top, w, h), 32).float()
        # the crop's columns run over the box's columns, its rows over the box's rows
        xs = crop[0, 16] * (width - 1) / 255
        ys = crop[1, :, 16] * (height - 1) / 255
        expect_x = left + (torch.arange(32) + 0.5) * w / 32 - 0.5
        expect_y = top + (torch.arange(32) + 0.5) * h / 32 - 0.5
        tol = 1.5 + max(width, height) / 255  # rounding to 8 bits, and edge pixels clamped
        assert (xs[1:-1] - expect_x[1:-1]).abs().max() < tol and (ys[1:-1] - expect_y[1:-1]).abs().max() < tol


def test_boxes_cover_the_whole_of_a_wide_image_not_its_centre_square():
    g = torch.Generator().manual_seed(1)
    boxes = [crop_box(g, 1000, 250, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(300)]
    assert min(b[0] for b in boxes) < 50 and max(b[0] + b[2] for b in boxes) > 950  # both far ends are seen
    assert all(b[3] <= 250 and b[2] <= 1000 for b in boxes)


def test_a_box_that_cannot_fit_falls_back_to_the_centre_at_an_allowed_aspect():
    left, top, w, h = crop_box(torch.Generator().manual_seed(0), 1000, 100, (1.0, 1.0), (3 / 4, 4 / 3))
    assert (w, h) == pytest.approx((400 / 3, 100)) and left == pytest.approx((1000 - w) / 2) and top == 0


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.5, 1.0), (1.0, 1.0)])
def test_every_box_lies_inside_its_image_whatever_the_size(scale):
    """Odd sizes whose own aspect is allowed once made the centre fallback a hair taller than the image
    (``width / (width / height)`` rounds above ``height``), which Pillow refuses mid-run."""
    g = torch.Generator().manual_seed(0)
    for width in range(1, 400, 3):
        for height in range(1, 400, 7):
            left, top, w, h = crop_box(g, width, height, scale, (3 / 4, 4 / 3))
            assert 0 <= left and 0 <= top and left + w <= width and top + h <= height, (width, height)
    box = crop_box(g, 25, 29, (1.0, 1.0), (3 / 4, 4 / 3))  # 25 / (25 / 29) > 29 in floating point
    assert box[1] == 0 and resized_crop(Image.new("L", (25, 29)), box, 8).shape == (1, 8, 8)


def test_shrinking_crops_are_antialiased():
    stripes = np.zeros((512, 512), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: their mean, not an alias, must survive shrinking
    crop = resized_crop(Image.fromarray(stripes), (0, 0, 512, 512), 32).float()
    assert (crop - 127.5).abs().max() < 3


def test_jpegs_decode_no_larger_than_the_views_need(tmp_path):
    Image.fromarray(data.astronaut()).resize((2000, 1000)).save(tmp_path / "big.jpg", quality=90)
    views = [ViewConfig(size=64, scale=(0.25, 1.0)), ViewConfig(size=32, scale=(0.05, 0.4))]
    side = decode_side(views)
    assert side == max(128, math.ceil(32 / math.sqrt(0.05)))
    img = decode(tmp_path / "big.jpg", 3, side)
    assert img.size == (2000 // 4, 1000 // 4) and min(img.size) >= side  # libjpeg's 1/4 scale: the smallest that fits
    assert decode(tmp_path / "big.jpg", 3).size == (2000, 1000)
    assert decode_side([ViewConfig(size=224, scale=(0.01, 1.0))]) == 4 * 224  # capped


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """Real photos of varied sizes and aspect ratios as JPEGs and PNGs, in two class folders."""
    root = tmp_path_factory.mktemp("photos")
    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    for i in range(12):
        img = Image.fromarray(photos[i % 4]).resize((120 + 37 * i, 300 - 13 * i))
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(exist_ok=True)
        img.save(folder / f"{i}.{'jpg' if i % 3 else 'png'}")
    return root


def test_folder_batches_carry_one_crop_per_view_and_resume_exactly(photo_folder):
    ds = image_folder(photo_folder, "all", size=32)
    views = [ViewConfig(size=32), ViewConfig(size=32), ViewConfig(size=16, scale=(0.05, 0.4))]
    run = list(batches(ds, 4, seed=7, epoch=1, views=views))
    assert len(run) == 3
    b = run[0]
    assert [tuple(c.shape) for c in b.crops] == [(4, 3, 32, 32), (4, 3, 32, 32), (4, 3, 16, 16)]
    assert b.images is b.crops[0] and not torch.equal(b.crops[0], b.crops[1])  # two different crops
    resumed = list(batches(ds, 4, seed=7, epoch=1, start=2, views=views, workers=1))
    assert all(torch.equal(x, y) for x, y in zip(resumed[0].crops, run[2].crops))
    other = next(iter(batches(ds, 4, seed=7, epoch=2, views=views)))
    assert not torch.equal(other.crops[0], b.crops[0])  # new crops each epoch


def test_the_same_sample_gets_the_same_crops_whatever_its_batch():
    g1, g2 = crop_generator(3, 1, 17), crop_generator(3, 1, 17)
    crops = RandomCrops([ViewConfig(size=16)])
    img = _coordinates(100, 60)
    assert torch.equal(crops(img, g1)[0], crops(img, g2)[0])
    assert crop_generator(3, 1, "shard-000001/cat_7").initial_seed() != crop_generator(3, 1, 17).initial_seed()


@pytest.mark.slow
def test_a_resumed_run_on_a_folder_of_photos_matches_the_uninterrupted_one(photo_folder, tmp_path):
    from freelabel.cli import main

    full, part = tmp_path / "full", tmp_path / "part"
    args = [
        "pretrain",
        "simclr",
        "--data",
        str(photo_folder),
        "--recipe",
        "simclr-fashion-mnist",
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--set",
        "views.size=32",
        "--set",
        "checkpoint_every=2",
        "--set",
        "data.workers=1",
        "--set",
        "method_args.hidden_dim=32",
        "--set",
        "backbone.args.widths=[8,16]",
    ]
    assert main([*args, "--out", str(full)]) == 0
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step-00000004")
    (part / "backbone.safetensors").unlink()
    assert main(["pretrain", "--resume", str(part)]) == 0
    a, b = load_file(str(full / "backbone.safetensors")), load_file(str(part / "backbone.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
