"""Linear probe, fine-tuning, the label subsets and the classifier folder with ``predict``."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from freelabel.cli import main
from freelabel.config import ConfigError, RunConfig
from freelabel.evaluate.finetune import SUBSET_FILE, choose_subset, finetune, parse_labels
from freelabel.evaluate.linear import fit_linear

LEVELS = (40, 100, 160, 220)  # class c: an image of mean intensity LEVELS[c], a linear function of the pixels


def intensity_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(LEVELS)
    noise = rng.integers(-30, 31, (n, 16, 16))
    return np.clip(np.array(LEVELS)[labels, None, None] + noise, 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run directory of a tiny CNN at its random initialisation, on a folder of 16-px grey images in four
    classes (train/ 40 per class, val/ 10 per class)."""
    from freelabel.run import save_backbone, save_config

    root = tmp_path_factory.mktemp("protocols")
    data = root / "data"
    for split, n, seed in (("train", 160, 0), ("val", 40, 1)):
        images, labels = intensity_images(n, seed)
        for i, (img, c) in enumerate(zip(images, labels)):
            (data / split / f"level{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(data / split / f"level{c}" / f"{i:03d}.png")
    cfg = RunConfig(method="simclr")
    cfg.backbone.name, cfg.backbone.args = "convnet", {"widths": [8, 16]}
    cfg.data.name, cfg.data.image_size, cfg.data.channels, cfg.data.workers = str(data), 16, 1, 0
    cfg.views.size, cfg.views.mean, cfg.views.std = 16, (0.5,), (0.5,)
    run = root / "run"
    run.mkdir()
    save_config(run, cfg)
    from freelabel.run import load_backbone

    save_backbone(run, load_backbone(run, trained=False)[0].state_dict())
    return run


def test_linear_probe_recovers_a_linear_rule():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 5, generator=g)
    x, xt = torch.randn(4000, 32, generator=g) * 3 + 1, torch.randn(1000, 32, generator=g) * 3 + 1
    results, head = fit_linear(x, (x @ w).argmax(1), xt, (xt @ w).argmax(1), epochs=10)
    assert results["top1"] > 90
    assert len(results["grid_val_top1"]) == 24 and results["val_images"] == 400
    # the head keeps the standardisation folded in: it takes raw features and agrees with the reported accuracy
    assert 100 * (head(xt).argmax(1) == (xt @ w).argmax(1)).float().mean() == pytest.approx(results["top1"], abs=0.01)
    shuffled, _ = fit_linear(x, torch.randint(0, 5, (4000,), generator=g), xt, (xt @ w).argmax(1), epochs=3)
    assert shuffled["top1"] < 40  # random labels teach nothing


def test_label_subset_is_the_asked_size_per_class_and_seeded():
    labels = torch.arange(1000) % 10  # 100 per class
    for spec, per_class in (("1%", 1), ("10%", 10), ("25", 25), ("100%", 100), ("500", 100)):
        idx = choose_subset(labels, spec, seed=0)
        assert torch.bincount(labels[idx], minlength=10).tolist() == [per_class] * 10
        assert len(set(idx.tolist())) == len(idx)
    assert torch.equal(choose_subset(labels, "10%", 3), choose_subset(labels, "10%", 3))
    assert not torch.equal(choose_subset(labels, "10%", 3), choose_subset(labels, "10%", 4))
    assert parse_labels("1%") == 0.01 and parse_labels("7") == 7
    for bad in ("0%", "150%", "abc", "-3", "0"):
        with pytest.raises(ConfigError):
            parse_labels(bad)


@pytest.mark.slow
def test_finetune_learns_then_predict_and_export_round_trip(tiny_run, tmp_path):
    from freelabel.classifier import load_classifier, predict_folder
    from freelabel.evaluate.common import load_model
    from freelabel.run import load_backbone

    out = tmp_path / "clf"
    r = finetune(tiny_run, labels="100%", epochs=40, lr=4e-3, out=out)
    assert r["train_images"] == 160 and r["test_images"] == 40 and r["top1"] >= 90
    assert len((out / SUBSET_FILE).read_text().split()) == 160

    val = Path(load_model(tiny_run).data) / "val"
    rows, failed = predict_folder(out, val, tmp_path / "preds.csv", k=2)
    assert not failed and len(rows) == 40
    correct = sum(row[1] == row[0].split("/")[0] for row in rows)
    assert abs(100 * correct / 40 - r["top1"]) <= 5  # the folder's predictions are the fine-tuned model's
    with open(tmp_path / "preds.csv") as f:
        table = list(csv.reader(f))
    assert table[0] == ["image", "label_1", "score_1", "label_2", "score_2"] and len(table) == 41
    assert all(float(row[2]) >= float(row[4]) for row in table[1:])

    # the folder is also a run directory: its backbone loads (and exports) like a run's
    clf = load_classifier(out)
    backbone, _ = load_backbone(out)
    x = torch.randn(2, 1, 16, 16)
    assert torch.allclose(backbone(x), clf.backbone.cpu()(x), atol=1e-5)
    assert main(["predict", str(out), str(val), "--out", str(tmp_path / "cli.csv")]) == 0
    assert main(["predict", str(tmp_path), str(val)]) == 2  # not a classifier folder: one line, status 2


@pytest.mark.slow
def test_finetune_on_a_listed_subset(tiny_run, tmp_path):
    train = Path(load_data := str(tiny_run.parent / "data")) / "train"
    listed = sorted(str(p) for p in train.rglob("*.png"))[::20]
    (tmp_path / "pick.txt").write_text("# chosen by hand\n" + "\n".join(listed) + "\n")
    r = finetune(tiny_run, load_data, subset_file=tmp_path / "pick.txt", epochs=1, out=tmp_path / "c")
    assert r["train_images"] == len(listed) == 8
    assert (tmp_path / "c" / SUBSET_FILE).read_text().split() == listed
    (tmp_path / "bad.txt").write_text("no/such/image.png\n")
    assert main(["eval", "finetune", str(tiny_run), "--subset", str(tmp_path / "bad.txt")]) == 2
    assert main(["eval", "finetune", str(tiny_run), "--labels", "300%"]) == 2
