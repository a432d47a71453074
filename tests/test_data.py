import pytest
import torch

from freelabel.data.loader import batches
from freelabel.data.registry import open_dataset
from freelabel.data.sources import fashion_mnist, image_folder, load_image
from freelabel.errors import DataError


def test_fashion_mnist_is_the_embedded_default():
    train, test = fashion_mnist("train"), fashion_mnist("test")
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.classes[9] == "Ankle boot"


def test_every_format_and_mode_decodes_to_the_asked_size(mixed_folder):
    for path in sorted((mixed_folder / "good").iterdir()):
        x = load_image(path, 16, channels=3)
        assert x.shape == (3, 16, 16) and x.dtype == torch.uint8, path.name
    grey16 = load_image(mixed_folder / "good" / "grey16.png", 20, channels=1)
    grey8 = load_image(mixed_folder / "good" / "grey.png", 20, channels=1)
    assert (grey16.int() - grey8.int()).abs().max() <= 1  # 16-bit rescaled to 8 bits, not clipped


def test_broken_files_are_skipped_counted_and_reported(mixed_folder):
    ds = image_folder(mixed_folder, "all", size=16)
    assert len(ds) == 11  # 8 good + 3 broken with image extensions; notes.txt ignored
    assert ds.ignored == 1
    skipped: list[str] = []
    got = list(batches(ds, 4, seed=0, epoch=0, failed=skipped.extend))
    assert [len(b.images) for b in got] == [4, 4]  # 8 readable of 11: two full batches, none short
    assert sorted(p.split("/")[-1] for p in skipped) == ["empty.webp", "not_an_image.png", "truncated.jpg"]
    assert list(batches(ds, 11, seed=0, epoch=0)) == []  # fewer readable images than a batch: no batch


def test_missing_empty_and_unknown_data_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(str(tmp_path / "nowhere"), size=8)
    with pytest.raises(DataError, match="no images"):
        open_dataset(str(tmp_path), size=8)
    with pytest.raises(DataError, match="valid: fashion-mnist"):
        open_dataset("imagenet-21k", size=8)


def test_folder_split_is_per_class_and_disjoint(fmnist_folder):
    train = image_folder(fmnist_folder, "train", 28, channels=1)
    test = image_folder(fmnist_folder, "test", 28, channels=1)
    assert len(train) == 320 and len(test) == 80
    assert not set(train.paths) & set(test.paths)
    assert sorted(set(test.labels)) == list(range(10))


def test_batch_order_is_seeded_and_splits_exactly_across_processes(fmnist):
    one = [b.images for b in batches(fmnist, 64, seed=3, epoch=2)][:5]
    again = [b.images for b in batches(fmnist, 64, seed=3, epoch=2)][:5]
    assert all(torch.equal(a, b) for a, b in zip(one, again))
    halves = [list(batches(fmnist, 32, seed=3, epoch=2, rank=r, world=2))[:5] for r in (0, 1)]
    for s in range(5):
        torch.testing.assert_close(torch.cat([halves[0][s].images, halves[1][s].images]), one[s])
    resumed = [b.images for b in batches(fmnist, 64, seed=3, epoch=2, start=3)][:2]
    assert torch.equal(resumed[0], one[3]) and torch.equal(resumed[1], one[4])
