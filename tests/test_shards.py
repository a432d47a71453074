"""Image shards: written from folders in parallel, streamed once per epoch across processes and loader
workers, resumed at any step, in memory bounded by the shuffle buffer rather than the data."""

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from freelabel.cli import main
from freelabel.data.loader import batches
from freelabel.data.registry import open_dataset
from freelabel.data.shards import ImageShards, make_shards
from freelabel.data.views import ViewConfig


@pytest.fixture(scope="module")
def numbered(tmp_path_factory, fmnist):
    """50 real images (Fashion-MNIST, two class folders) captioned with their number, as shards of 8."""
    root = tmp_path_factory.mktemp("numbered")
    for i in range(50):
        folder = root / ("even" if i % 2 == 0 else "odd")
        folder.mkdir(exist_ok=True)
        Image.fromarray(fmnist.images[i, 0].numpy()).convert("RGB").save(folder / f"n{i}.png")
        (folder / f"n{i}.txt").write_text(f"#{i}")
    make_shards(str(root), root.parent / "numbered-shards", per_shard=8, workers=2)
    return root.parent / "numbered-shards"


def _epoch(spec, rank, world, workers, start=0, epoch=3, views=None):
    ds = ImageShards(str(spec), "all", 16)
    return list(batches(ds, 4, seed=1, epoch=epoch, start=start, rank=rank, world=world, workers=workers, views=views))


def test_a_labelled_folder_becomes_shards_with_its_classes(fmnist_folder, tmp_path, capsys):
    assert main(["shards", "make", str(fmnist_folder), str(tmp_path / "s"), "--per-shard", "64", "--workers", "2"]) == 0
    assert "7 shards written" in capsys.readouterr().out  # 400 images
    index = json.loads((tmp_path / "s" / "shards.json").read_text())
    assert index["classes"] == [f"class_{c}" for c in range(10)] and sum(s["samples"] for s in index["shards"]) == 400
    ds = open_dataset(str(tmp_path / "s"), "all", 28, channels=1)
    assert isinstance(ds, ImageShards) and ds.classes == index["classes"] and len(ds) == 400
    items = list(ds)
    assert torch.bincount(torch.tensor([label for _, label in items])).tolist() == [40] * 10
    assert items[0][0].shape == (1, 28, 28)
    first = [label for _, label in items[:64]]
    assert len(set(first)) > 5  # written in a shuffled order, not class by class
    (tmp_path / "s" / "shards.json").unlink()  # shards made elsewhere: counted from their tar headers
    assert len(ImageShards(str(tmp_path / "s"), "train", 28)) + len(ImageShards(str(tmp_path / "s"), "test", 28)) == 400


@pytest.mark.parametrize("workers", [0, 2])
def test_every_sample_once_per_epoch_across_two_processes(numbered, workers):
    ranks = [_epoch(numbered, r, 2, workers) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 6  # 50 samples // (4 x 2): the same steps on every process
    seen = [t for batches_ in ranks for b in batches_ for t in b.texts]
    assert len(seen) == len(set(seen)) == 48 and set(seen) <= {f"#{i}" for i in range(50)}
    other = [t for b in _epoch(numbered, 0, 2, workers, epoch=4) for t in b.texts]
    assert other != [t for b in ranks[0] for t in b.texts]  # another epoch, another order


def test_labels_and_captions_travel_with_their_images(numbered):
    for b in _epoch(numbered, 0, 1, 0):
        assert [int(t[1:]) % 2 for t in b.texts] == b.labels.tolist()  # "even" is class 0


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_stream_continues_exactly(numbered, workers):
    views = [ViewConfig(size=16), ViewConfig(size=8, scale=(0.1, 0.5))]
    full = _epoch(numbered, 1, 2, workers, views=views)
    assert [b.crops[1].shape for b in full] == [torch.Size([4, 3, 8, 8])] * 6
    for start in (3, 4):  # from either loader worker's turn
        resumed = _epoch(numbered, 1, 2, workers, start=start, views=views)
        assert [b.texts for b in resumed] == [b.texts for b in full[start:]]
        for a, b in zip(resumed, full[start:]):
            assert all(torch.equal(x, y) for x, y in zip(a.crops, b.crops))


def _noise_folder(root: Path, copies: int) -> Path:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(20)]  # ~12 KB as PNG
    for c in range(copies):
        for i, img in enumerate(images):
            Image.fromarray(img).save(root / f"c{c}_{i}.png")
    return root


def test_memory_stays_bounded_by_the_buffer_not_the_shards(tmp_path):
    peaks = {}
    for copies in (2, 8):
        (tmp_path / f"x{copies}").mkdir()
        folder = _noise_folder(tmp_path / f"x{copies}", copies)
        make_shards(str(folder), tmp_path / f"s{copies}", per_shard=5, workers=1)
        ds = ImageShards(str(tmp_path / f"s{copies}"), "all", 16, buffer=8)
        tracemalloc.start()
        n = sum(len(b.images) for b in batches(ds, 4, seed=0, epoch=0, views=[ViewConfig(size=16)]))
        peaks[copies] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert n == 20 * copies
    print(peaks)
    assert peaks[8] < 1.3 * peaks[2], peaks  # 4x the data and the shards, the same memory
    ds = ImageShards(str(tmp_path / "s8"), "all", 16, buffer=8)
    assert len(ds) == 160 and len(ds.shards) == 32


@pytest.mark.slow
def test_pretraining_streams_shards(numbered, tmp_path):
    run = tmp_path / "run"
    assert (
        main(
            [
                "pretrain",
                "simclr",
                "--data",
                str(numbered),
                "--recipe",
                "simclr-fashion-mnist",
                "--steps",
                "3",
                "--batch-size",
                "8",
                "--set",
                "views.size=16",
                "--set",
                "data.workers=1",
                "--set",
                "method_args.hidden_dim=32",
                "--set",
                "backbone.args.widths=[8,16]",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    metrics = json.loads((run / "metrics.json").read_text())["pretrain"]
    assert metrics["steps"] == 3 and metrics["images_seen"] == 24


def test_an_index_that_overcounts_is_named_in_the_error(numbered, tmp_path):
    import shutil

    from freelabel.errors import DataError

    copy = tmp_path / "copy"
    shutil.copytree(numbered, copy)
    index = json.loads((copy / "shards.json").read_text())
    index["shards"][0]["samples"] += 20
    (copy / "shards.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match="hold fewer samples than shards.json counts; delete it"):
        _epoch(copy, 0, 1, 0)


def test_broken_members_of_a_shard_are_skipped_and_counted_like_broken_files(fmnist, tmp_path):
    """Shards made elsewhere may hold anything: garbage, a cut-short PNG, a decompression bomb."""
    import io
    import tarfile

    def png(array) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        return buf.getvalue()

    bomb = io.BytesIO()
    Image.new("1", (30000, 30000)).save(bomb, format="PNG")  # a few kB that would decode to 900 MP
    members = {f"good{i}": png(fmnist.images[i, 0].numpy()) for i in range(10)}
    members |= {"garbage": b"not an image at all", "cut": members["good0"][:60], "bomb": bomb.getvalue()}
    (tmp_path / "s").mkdir()
    with tarfile.open(tmp_path / "s" / "shard-000000.tar", "w") as tar:
        for key, data in members.items():
            info = tarfile.TarInfo(f"{key}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ds = ImageShards(str(tmp_path / "s"), "all", 28, channels=1)
    assert len(ds) == 13
    skipped: list[str] = []
    got = list(batches(ds, 5, seed=0, epoch=0, failed=skipped.extend))  # 2 chunks of 5 read, 3 left out
    assert all(len(b.images) == 5 for b in got) and 5 * len(got) + len(skipped) <= 10
    skipped = []
    got = list(batches(ds, 13, seed=0, epoch=0, failed=skipped.extend))  # one chunk: every member read
    assert got == [] and len(skipped) == 3  # 10 readable images fill no batch of 13
    assert {s.rsplit(":", 1)[-1] for s in skipped} == {"garbage", "cut", "bomb"}
    assert sorted(where for image, where in ds if image is None) == sorted(skipped)  # the evaluation path too
