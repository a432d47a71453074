import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def fmnist():
    from freelabel.data.sources import fashion_mnist

    return fashion_mnist("train")


def _class_folders(root, fmnist, per_class: int):
    counts = {c: 0 for c in range(10)}
    for img, label in zip(fmnist.images, fmnist.labels.tolist()):
        if counts[label] == per_class:
            continue
        folder = root / f"class_{label}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(img[0].numpy()).save(folder / f"{counts[label]:03d}.png")
        counts[label] += 1
        if all(v == per_class for v in counts.values()):
            break
    return root


@pytest.fixture(scope="session")
def fmnist_folder(tmp_path_factory, fmnist):
    """A labelled folder of real images: 40 Fashion-MNIST PNGs in each of the 10 class folders."""
    return _class_folders(tmp_path_factory.mktemp("fmnist_folder"), fmnist, 40)


@pytest.fixture(scope="session")
def fmnist_few(tmp_path_factory, fmnist):
    """The same with 5 images a class (40 to train on, 10 held out): for models that are slow on a CPU."""
    return _class_folders(tmp_path_factory.mktemp("fmnist_few"), fmnist, 5)


@pytest.fixture
def mixed_folder(tmp_path):
    """Images in every supported format and mode, plus broken and non-image files."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    good = tmp_path / "good"
    good.mkdir()
    Image.fromarray(rgb).save(good / "rgb.png")
    Image.fromarray(rgb).save(good / "rgb.jpg", quality=90)
    Image.fromarray(rgb).save(good / "rgb.webp")
    Image.fromarray(rgb).save(good / "rgb.bmp")
    Image.fromarray(rgb[:, :, 0]).save(good / "grey.png")
    Image.fromarray(np.dstack([rgb, np.full((20, 30), 128, np.uint8)])).save(good / "rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(good / "palette.png")
    Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257).save(good / "grey16.png")
    bad = tmp_path / "bad"
    bad.mkdir()
    full = (good / "rgb.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (bad / "not_an_image.png").write_text("this is text, not a PNG")
    (bad / "empty.webp").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("ignored: not an image extension")
    return tmp_path


@pytest.fixture(scope="session")
def captioned(tmp_path_factory, fmnist):
    """A captioned folder of real images: 10 Fashion-MNIST images of each of 3 classes (class
    sub-folders), "a photo of a <class>, number <i>" in a .txt beside each, plus a CSV and a JSONL
    listing the same pairs."""
    root = tmp_path_factory.mktemp("captioned")
    rows = []
    for c, name in ((1, "trouser"), (7, "sneaker"), (8, "bag")):
        (root / name).mkdir()
        for i, idx in enumerate((fmnist.labels == c).nonzero()[:10, 0].tolist()):
            path = root / name / f"{name}{i}.png"
            Image.fromarray(fmnist.images[idx, 0].numpy()).save(path)
            text = f"a photo of a {name}, number {i}"
            path.with_suffix(".txt").write_text(text + "\n")
            rows.append({"image": f"{name}/{path.name}", "caption": text})
    with open(root / "pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    (root / "pairs.jsonl").write_text(
        "".join(json.dumps({"file": r["image"], "text": r["caption"]}) + "\n" for r in rows)
    )
    return root
