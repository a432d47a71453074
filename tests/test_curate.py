import io
import json

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image

from freelabel.cli import main
from freelabel.config import load_recipe, resolve
from freelabel.data import registry, sources
from freelabel.data.registry import open_dataset
from freelabel.errors import DataError
from freelabel.methods import METHODS
from freelabel.pipelines import ann
from freelabel.pipelines.curate import (
    aligned_correlation,
    balance,
    curate,
    duplicate_groups,
    pixel_similarity,
    select,
    thumbnails,
)
from freelabel.pipelines.search import SearchError, build_index
from freelabel.run import save_backbone, save_config


def spread(n: int, dim: int = 32, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


@pytest.mark.parametrize("graph", [False, True])
def test_near_duplicates_are_grouped_behind_their_first_row(monkeypatch, graph):
    if graph:
        monkeypatch.setattr(ann, "THRESHOLD", 10)
    x = spread(60)
    x[[50, 51, 52, 55]] = F.normalize(x[[3, 7, 3, 20]] + 0.03 * spread(4, seed=1), dim=1)  # copies, lightly changed
    groups = duplicate_groups(x, 0.95)
    assert sorted([i for i, *_ in g] for g in groups) == [[3, 50, 52], [7, 51], [20, 55]]
    for g in groups:
        assert g[0][1] == pytest.approx(1) and all(0.95 <= s < 1 and px is None for _, s, px in g[1:])
    assert duplicate_groups(x, 0.9999) == []


def test_similar_images_do_not_chain_into_one_group():
    a, b = spread(2, seed=3)
    chain = F.normalize(torch.stack([a, a + 0.35 * b, a + 0.75 * b]), dim=1)  # each close to the next only
    sims = chain @ chain.T
    assert sims[0, 1] > 0.9 and sims[1, 2] > 0.9 and sims[0, 2] < 0.9
    assert [[i for i, *_ in g] for g in duplicate_groups(chain, 0.9)] == [[0, 1]]  # 2 stays: far from 0, 1 is gone


def photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def altered(img: Image.Image, seed: int, crop: float = 0.0) -> Image.Image:
    """A near-duplicate as the web makes them: shrunk, brighter, noisy, saved as a JPEG; optionally cropped."""
    g = np.random.default_rng(seed)
    w, h = img.size
    img = img.crop((int(crop * w), int(crop * h), w, h)).resize((int(0.6 * w), int(0.6 * h)))
    x = np.asarray(img, dtype=np.float32) * 1.1 + g.normal(0, 4, (img.height, img.width, 3))
    out = io.BytesIO()
    Image.fromarray(x.clip(0, 255).astype(np.uint8)).save(out, "JPEG", quality=70)
    return Image.open(out)


def test_thumbnail_correlation_tells_a_copy_from_another_picture(tmp_path):
    names = ["coffee", "chelsea", "rocket", "camera"]
    for n in names:
        photo(n).save(tmp_path / f"{n}.png")
        altered(photo(n), len(n)).save(tmp_path / f"{n}-copy.jpg")
        altered(photo(n), len(n), crop=0.03).save(tmp_path / f"{n}-cropped.jpg")
    Image.new("L", (50, 40), 200).save(tmp_path / "blank.png")
    Image.new("L", (80, 60), 201).save(tmp_path / "blank-copy.png")
    Image.new("L", (80, 60), 90).save(tmp_path / "dark.png")
    files = [f"{n}{end}" for end in (".png", "-copy.jpg", "-cropped.jpg") for n in names]
    t = thumbnails([str(tmp_path / f) for f in [*files, "blank.png", "blank-copy.png", "dark.png", "gone.png"]])

    def against_originals(first: int) -> torch.Tensor:  # [copy, original]
        return torch.stack([aligned_correlation(t[:4], t[first + i].expand(4, -1, -1)) for i in range(4)])

    copies, cropped = against_originals(4), against_originals(8)
    assert (copies.diagonal() >= 0.99).all()  # the default threshold keeps none of these copies
    assert (cropped.diagonal() > 0.85).all()  # a 3% crop shifts and scales: found at a lower threshold
    others = ~torch.eye(4, dtype=torch.bool)
    assert (copies[others] < 0.5).all() and (cropped[others] < 0.5).all()  # unrelated photos
    assert aligned_correlation(t[12:13], t[13:14]) > 0.99 and aligned_correlation(t[12:13], t[14:15]) < 0.6  # blank
    assert aligned_correlation(t[12:13], t[:1]) == 0 and t[15].isnan().all()  # blank against a photo; a lost file


def test_each_pair_is_compared_at_its_smaller_image_size(tmp_path):
    """A 1-pixel image in a folder of photos is compared at 8 pixels with its partners only; the photos
    keep their 32-pixel thumbnails."""
    photo("coffee").save(tmp_path / "coffee.png")
    altered(photo("coffee"), 0).save(tmp_path / "coffee-copy.jpg")
    photo("rocket").save(tmp_path / "rocket.png")
    Image.new("L", (1, 1), 255).save(tmp_path / "dot.png")
    Image.new("L", (2, 2), 50).save(tmp_path / "dot2.png")
    files = [str(tmp_path / f) for f in ("coffee.png", "coffee-copy.jpg", "rocket.png", "dot.png", "dot2.png")]
    sims = pixel_similarity(files)(np.array([1, 2, 3, 4, 4]), np.array([0, 0, 0, 3, 4]))
    assert sims[0] >= 0.99 and sims[1] < 0.5 and sims[2] == 0  # copy; another photo; a flat dot against a photo
    assert sims[3] < 0.5 and sims[4] == pytest.approx(1)  # white against grey; an image against itself
    at_32 = thumbnails(files[:2])  # the photos' pair is compared at 32 px whatever else is in the folder
    assert sims[0] == pytest.approx(float(aligned_correlation(at_32[1:], at_32[:1])), abs=1e-6)
    assert sims[0] != pytest.approx(float(aligned_correlation(*thumbnails(files[:2], 8)[:, None], 1)), abs=1e-4)


def test_pixels_overrule_embeddings_that_call_siblings_copies(tmp_path):
    """Forty Fashion-MNIST shirts and a shifted, darker, noisy copy of one, all close in the embedding (as
    garments of one cut are in a trained one): the embeddings alone drop siblings; the thumbnails keep
    them and drop the copy only."""
    ds = sources.fashion_mnist("test")
    shirts = (ds.labels == 0).nonzero()[:40, 0]
    files = [tmp_path / f"{i:02d}.png" for i in range(40)] + [tmp_path / "99-copy.png"]
    for f, j in zip(files, shirts.tolist()):
        Image.fromarray(ds.images[j, 0].numpy()).save(f)
    copy = torch.roll(ds.images[shirts[5], 0].float(), (1, -2), (0, 1)) * 0.9
    copy += 6 * torch.randn(copy.shape, generator=torch.Generator().manual_seed(0))
    Image.fromarray(copy.clamp(0, 255).to(torch.uint8).numpy()).save(files[-1])
    x = F.normalize(spread(1).expand(41, -1) + 0.1 * spread(41, seed=4), dim=1)  # all within cosine ~0.99
    x[40] = F.normalize(x[5] + 0.01 * spread(1, seed=5)[0], dim=0)  # and the copy nearest its original
    assert len({i for g in duplicate_groups(x, 0.9) for i, *_ in g[1:]}) > 10
    (group,) = duplicate_groups(x, 0.9, pixel_similarity([str(f) for f in files]))
    assert [i for i, *_ in group] == [5, 40] and group[1][2] >= 0.99


def test_balance_caps_clusters_and_select_takes_one_per_mode():
    centres = spread(4, seed=2) * 3
    sizes = [100, 10, 12, 8]
    x = F.normalize(torch.cat([c + 0.05 * torch.randn(n, 32) for c, n in zip(centres, sizes)]), dim=1)
    owner = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    rows, per = balance(x, 4)
    assert sorted(torch.bincount(owner[rows]).tolist()) == [8, 10, 10, 10]  # capped at the (lower) median size, 10
    assert sorted(c["size"] for c in per) == sorted(sizes) and len(rows) == 38
    chosen = select(x, 4)
    assert sorted(owner[chosen].tolist()) == [0, 1, 2, 3]  # one image per mode, not four of the big one
    inside = (x[chosen] @ F.normalize(centres, dim=1).T).max(1).values
    assert (inside > 0.99).all()  # typical images, near their mode's centre


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cfg = resolve(
        load_recipe("simclr-fashion-mnist"),
        {"method": "simclr", "data.channels": 1, "backbone.args": {"widths": [8, 16]}},
    )
    save_config(run, cfg)
    torch.manual_seed(0)
    save_backbone(run, METHODS["simclr"].make_backbone("convnet", 1, cfg.views, widths=[8, 16]).state_dict())
    return run


@pytest.fixture
def small_fmnist(monkeypatch):
    """300 Fashion-MNIST training images, the last 10 copies of the first 10."""
    train, test = sources.fashion_mnist("train"), sources.fashion_mnist("test")
    train.images, train.labels = train.images[:300].clone(), train.labels[:300].clone()
    train.images[290:], train.labels[290:] = train.images[:10], train.labels[:10]
    monkeypatch.setitem(registry.NAMED, "fashion-mnist", lambda split: train if split == "train" else test)
    return train


@pytest.mark.slow
def test_curate_an_embedded_set_into_a_list_that_data_accepts(run, small_fmnist, tmp_path, capsys):
    out = tmp_path / "kept.txt"
    r = curate("fashion-mnist", run, out, threshold=0.999, device="cpu")
    lines = out.read_text().splitlines()
    assert r["duplicates"]["dropped"] >= 10 and r["kept"] == len(lines) == 300 - r["duplicates"]["dropped"]
    assert not {f"fashion-mnist/train/{i:06d}" for i in range(290, 300)} & set(lines)
    assert lines[0] == "fashion-mnist/train/000000"
    report = json.loads(out.with_suffix(".json").read_text())
    assert (
        report == r
        and {
            "kept": "fashion-mnist/train/000000",
            "dropped": [{"image": "fashion-mnist/train/000290", "similarity": 1.0, "pixels": 1.0}],
        }
        in r["duplicates"]["examples"]
    )
    ds = open_dataset(str(out), "train")
    keep = [int(x.rsplit("/", 1)[1]) for x in lines]
    assert torch.equal(ds.images, small_fmnist.images[keep]) and torch.equal(ds.labels, small_fmnist.labels[keep])
    assert len(open_dataset(str(out), "test")) == 10_000  # a list's test split is its set's own
    r = curate(
        "fashion-mnist", run, tmp_path / "label-these.txt", threshold=0.999, clusters=5, n_select=20, device="cpu"
    )
    assert r["kept"] == 20 and len((tmp_path / "label-these.txt").read_text().splitlines()) == 20
    assert r["balance"]["dropped"] > 0 and r["select"]["n"] == 20
    assert (
        main(["curate", "fashion-mnist", "--model", str(run), "--out", str(tmp_path / "x.txt"), "--select", "7"]) == 0
    )
    printed = capsys.readouterr().out
    assert "near-duplicates dropped" in printed and "7 selected" in printed and "wrote 7 images to" in printed
    assert main(["curate", "fashion-mnist", "--model", str(run), "--out", str(tmp_path / "x.csv")]) == 2
    assert "a file list ends in .txt" in capsys.readouterr().err
    build_index("fashion-mnist", run, tmp_path / "index", split="train", device="cpu")
    again = curate(tmp_path / "index", None, tmp_path / "from-index.txt", threshold=0.999)  # no model: its embeddings
    assert (tmp_path / "from-index.txt").read_text() == out.read_text() and again["duplicates"] == report["duplicates"]
    with pytest.raises(SearchError, match="give --model"):
        curate("fashion-mnist", None, out)
    with pytest.raises(SearchError, match="--select 5000 is not between 0 and the 300 images"):
        curate("fashion-mnist", run, out, n_select=5000, device="cpu")


def test_a_folder_list_keeps_paths_and_classes(tmp_path):
    root = tmp_path / "photos"
    for cls, names in {"cats": ["chelsea"], "things": ["coffee", "astronaut"]}.items():
        (root / cls).mkdir(parents=True)
        for name in names:
            Image.fromarray(getattr(skimage.data, name)()).save(root / cls / f"{name}.png")
    listed = tmp_path / "lists" / "some.txt"
    listed.parent.mkdir()
    listed.write_text(f"{root / 'things' / 'coffee.png'}\tthings\n../photos/cats/chelsea.png\tcats\n# a comment\n")
    ds = open_dataset(str(listed), "train", size=32)
    assert [p.name for p in ds.paths] == ["coffee.png", "chelsea.png"] and ds.classes == ["cats", "things"]
    assert [ds[i][1] for i in range(2)] == [1, 0] and ds[0][0].shape == (3, 32, 32)
    with pytest.raises(DataError, match="is a training set"):
        open_dataset(str(listed), "test", size=32)
    listed.write_text("gone.png\n")
    with pytest.raises(DataError, match="names 1 missing files"):
        open_dataset(str(listed), "train", size=32)
    listed.write_text("fashion-mnist/train/000001\nemoji/train/000002\n")
    with pytest.raises(DataError, match="one named set and split per list"):
        open_dataset(str(listed), "train")
