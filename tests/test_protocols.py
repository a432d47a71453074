"""Linear probe, fine-tuning, the label subsets and the classifier folder with ``predict``."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from freelabel.cli import main
from freelabel.config import RunConfig, parse_labels
from freelabel.data.composed import THRESHOLD, compose
from freelabel.data.views import ViewConfig
from freelabel.encoder import Encoder
from freelabel.errors import ConfigError, DataError
from freelabel.evaluate.attention import attention_maps, cls_attention, evaluate_attention, jaccard, mass_mask
from freelabel.evaluate.dense import evaluate_dense, fit_dense
from freelabel.evaluate.finetune import SUBSET_FILE, choose_subset, finetune, read_subset
from freelabel.evaluate.linear import fit_linear

LEVELS = (40, 100, 160, 220)  # class c: an image of mean intensity LEVELS[c], a linear function of the pixels


def intensity_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(LEVELS)
    noise = rng.integers(-30, 31, (n, 16, 16))
    return np.clip(np.array(LEVELS)[labels, None, None] + noise, 0, 255).astype(np.uint8), labels


def make_run(run: Path, data: str, backbone: str, args: dict, size: int) -> Path:
    """A run directory of a tiny backbone saved at its random initialisation."""
    from freelabel.methods import load_backbone
    from freelabel.run import save_backbone, save_config

    cfg = RunConfig(method="simclr")
    cfg.backbone.name, cfg.backbone.args = backbone, args
    cfg.data.name, cfg.data.image_size, cfg.data.channels, cfg.data.workers = data, size, 1, 0
    cfg.views.size, cfg.views.mean, cfg.views.std = size, (0.5,), (0.5,)
    run.mkdir()
    save_config(run, cfg)
    save_backbone(run, load_backbone(run, trained=False)[0].state_dict())
    return run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny CNN's run on a folder of 16-px grey images in four classes (train/ 40 per class, val/ 10)."""
    root = tmp_path_factory.mktemp("protocols")
    data = root / "data"
    for split, n, seed in (("train", 160, 0), ("val", 40, 1)):
        images, labels = intensity_images(n, seed)
        for i, (img, c) in enumerate(zip(images, labels)):
            (data / split / f"level{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(data / split / f"level{c}" / f"{i:03d}.png")
    return make_run(root / "run", str(data), "convnet", {"widths": [8, 16]}, 16)


def tiny_vit() -> Encoder:
    from freelabel.backbones import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone("vit_tiny", 1, 16, patch_size=4, depth=2, embed_dim=32, num_heads=2).eval()
    return Encoder("tiny", backbone, ViewConfig(size=16, mean=(0.5,), std=(0.5,)), 1)


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


def test_finetune_recovers_a_linear_rule_in_images():
    from freelabel.backbones import build_backbone
    from freelabel.data.sources import TensorImages
    from freelabel.evaluate.finetune import accuracy, train

    def data(n, seed):
        images, labels = intensity_images(n, seed)
        return TensorImages(torch.from_numpy(images)[:, None], torch.from_numpy(labels))

    torch.manual_seed(0)
    backbone = build_backbone("convnet", 1, 16, widths=(8, 16))
    model = Encoder("tiny", backbone, ViewConfig(size=16, mean=(0.5,), std=(0.5,)), 1)
    clf, steps = train(model, data(160, 0), list("abcd"), epochs=10, lr=4e-3, batch_size=32)
    assert steps == 50 and accuracy(clf, data(80, 1)) >= 90


@pytest.mark.slow
def test_finetune_learns_then_predict_and_export_round_trip(tiny_run, tmp_path):
    from freelabel.evaluate.classifier import load_classifier, predict_folder
    from freelabel.evaluate.common import load_model
    from freelabel.methods import load_backbone

    out = tmp_path / "clf"
    r = finetune(tiny_run, labels="100%", epochs=40, lr=4e-3, out=out)
    assert r["train_images"] == 160 and r["test_images"] == 40 and r["top1"] >= 90
    assert len((out / SUBSET_FILE).read_text().split()) == 160

    val = Path(load_model(tiny_run).default_data) / "val"
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
    assert main(["predict", str(out), str(tmp_path / "nowhere")]) == 2
    assert main(["predict", str(out), str(val), "-k", "0"]) == 2


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
    for bad in (["--labels", "300%"], ["--minutes", "0"], ["--batch-size", "0"], ["--epochs", "-1"]):
        assert main(["eval", "finetune", str(tiny_run), *bad]) == 2


def test_composed_masks_match_their_objects_pixel_for_pixel(fmnist):
    scenes = compose("train", 30, size=56, objects=(2, 4), seed=5)
    assert torch.equal(scenes.images, compose("train", 30, size=56, objects=(2, 4), seed=5).images)
    assert not torch.equal(scenes.images, compose("train", 30, size=56, objects=(2, 4), seed=6).images)
    for image, mask, objects in zip(scenes.images, scenes.masks, scenes.objects):
        assert 2 <= len(objects) <= 4
        expected = torch.zeros(56, 56, dtype=torch.long)
        pixels = torch.full((56, 56), -1, dtype=torch.long)
        for o in objects:  # later garments cover earlier ones
            garment = fmnist.images[o["garment"], 0].long()
            assert o["class"] == int(fmnist.labels[o["garment"]])
            cover = garment > THRESHOLD
            window = (slice(o["top"], o["top"] + 28), slice(o["left"], o["left"] + 28))
            expected[window][cover] = 1 + o["class"]
            pixels[window][cover] = garment[cover]
        assert torch.equal(mask, expected)
        assert torch.equal(image[0].long()[mask > 0], pixels[mask > 0])  # an object's pixels are its garment's


def test_a_folder_of_images_with_png_masks(tmp_path):
    from freelabel.data.composed import mask_folder
    from freelabel.errors import DataError

    scenes = compose("test", 3, size=56, seed=0)
    for split in ("train", "test"):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir()
        for i, (image, mask) in enumerate(zip(scenes.images, scenes.masks)):
            Image.fromarray(image[0].numpy()).convert("RGB").save(tmp_path / split / "images" / f"{i}.jpg", quality=95)
            Image.fromarray(mask.numpy().astype(np.uint8)).save(tmp_path / split / "masks" / f"{i}.png")
    data = mask_folder(tmp_path, "test", 56, channels=3)
    assert data.images.shape == (3, 3, 56, 56) and torch.equal(data.masks, scenes.masks)
    assert len(data.classes) == int(scenes.masks.max()) + 1
    (tmp_path / "test" / "masks" / "2.png").unlink()
    with pytest.raises(DataError, match="lacks the masks of 1 images"):
        mask_folder(tmp_path, "test", 56)


def test_dense_probe_recovers_a_linear_rule():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 8, generator=g)

    def scenes(n):  # a 4x4 token grid of 2x2 regions, each of one class, linear in the region's features
        f = torch.randn(n, 8, 2, 2, generator=g).repeat_interleave(2, 2).repeat_interleave(2, 3)
        classes = torch.einsum("cd,ndhw->nchw", w, f).argmax(1)
        return f, classes.repeat_interleave(4, 1).repeat_interleave(4, 2)  # masks at 16 px

    (f, m), (ft, mt) = scenes(256), scenes(64)
    r = fit_dense(f, m, ft, mt, 3, epochs=40, lr=3e-2)
    assert r["miou"] > 75 and len(r["iou"]) == 3
    assert fit_dense(f, m[torch.randperm(256, generator=g)], ft, mt, 3, epochs=3)["miou"] < 50


def test_attention_maps_have_the_grid_shape_and_sum_like_attention():
    model = tiny_vit()
    images = torch.randint(0, 256, (3, 1, 16, 16), dtype=torch.uint8)
    rows, prefix = cls_attention(model, images)
    assert prefix == 1 and rows.shape == (3, 2, 17)
    assert torch.allclose(rows.sum(-1), torch.ones(3, 2), atol=1e-5)
    maps = attention_maps(model, images)
    assert maps.shape == (3, 2, 4, 4) and torch.equal(maps.flatten(2), rows[..., 1:])
    # the same rows computed from the last block's own query and key projections
    blk, seen = model.backbone.model.blocks[-1], []
    hook = blk.norm1.register_forward_hook(lambda _m, _i, out: seen.append(out))
    model.encode_image(images)
    hook.remove()
    q, k, _ = blk.attn.qkv(seen[0]).view(3, 17, 3, 2, 16).permute(2, 0, 3, 1, 4)
    expected = (q[:, :, :1] @ k.transpose(-2, -1) / 4).softmax(-1)[:, :, 0]
    assert torch.allclose(rows, expected, atol=1e-5)


def test_the_dino_mask_keeps_the_top_patches_holding_the_mass():
    maps = torch.tensor([[[0.1, 0.5], [0.3, 0.1]]])
    assert mass_mask(maps, 0.6).tolist() == [[[False, True], [True, False]]]
    assert mass_mask(maps, 0.4).tolist() == [[[False, True], [False, False]]]
    a, b = torch.tensor([[1, 1], [0, 0]]).bool(), torch.tensor([[1, 0], [1, 0]]).bool()
    assert jaccard(a, b).item() == pytest.approx(1 / 3)


def test_attention_of_a_pretrained_vit_counts_its_registers(tmp_path):
    import tiny_models

    from freelabel.evaluate.common import load_model

    model = load_model(tiny_models.vision("dinov2_with_registers", tmp_path / "m"), device="cpu")
    rows, prefix = cls_attention(model, torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8))
    assert prefix == 5 and rows.shape == (2, 2, 21)  # CLS + 4 registers + a 4x4 grid of 8-px patches at 32 px
    assert torch.allclose(rows.sum(-1), torch.ones(2, 2), atol=1e-4)


@pytest.mark.slow
def test_dense_probe_and_attention_on_runs(tiny_run, tmp_path):
    from freelabel.run import read_metrics

    r = evaluate_dense(tiny_run, "composed", epochs=1)
    assert r["trained"]["grid"] == [14, 14] and 0 < r["trained"]["miou"] < 100
    assert read_metrics(tiny_run)["dense"]["trained"]["miou"] == r["trained"]["miou"]
    assert main(["eval", "attention", str(tiny_run)]) == 2  # a CNN: one line naming what works
    vit = make_run(
        tmp_path / "vit",
        "fashion-mnist",
        "vit_tiny",
        {"patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2},
        28,
    )
    a = evaluate_attention(vit, out=tmp_path / "maps", images=2, baselines=True)
    assert a["trained"]["grid"] == [14, 14] and len(a["trained"]["jaccard_per_head"]) == 2
    assert 0 < a["random_init"]["jaccard_mean_head"] < 100
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == [
        "random_init-000.png",
        "random_init-001.png",
        "trained-000.png",
        "trained-001.png",
    ]


def test_layer_decay_scales_vit_blocks_from_the_head_down():
    import torch.nn as nn

    from freelabel.evaluate.classifier import Classifier
    from freelabel.evaluate.finetune import param_groups

    model = tiny_vit()  # 2 blocks
    net = Classifier(model, nn.Linear(32, 4), list("abcd"))
    groups = param_groups(net, model.backbone, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    scale_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(net.named_parameters())
    assert scale_of[id(named["head.weight"])] == (1.0, 0.05) and scale_of[id(named["head.bias"])] == (1.0, 0.0)
    assert scale_of[id(named["backbone.model.blocks.1.mlp.fc1.weight"])] == (0.5, 0.05)
    assert scale_of[id(named["backbone.model.blocks.0.mlp.fc1.weight"])] == (0.25, 0.05)
    assert scale_of[id(named["backbone.model.patch_embed.proj.weight"])] == (0.125, 0.05)
    assert scale_of[id(named["backbone.model.cls_token"])] == (0.125, 0.0)
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_a_subset_file_takes_curates_lines_row_numbers_and_paths_relative_to_the_list(tmp_path):
    from freelabel.data.sources import TensorImages

    ds = TensorImages(torch.zeros(10, 1, 4, 4, dtype=torch.uint8), torch.arange(10) % 2, ["a", "b"])
    (tmp_path / "sel.txt").write_text(
        "# curate --select\nfashion-mnist/train/000007\n3\n\nfashion-mnist/train/000003\n"
    )
    assert read_subset(tmp_path / "sel.txt", ds).tolist() == [3, 7]
    folder = tmp_path / "imgs"
    folder.mkdir()
    files = [folder / f"{i}.png" for i in range(3)]
    for f in files:
        Image.new("L", (4, 4)).save(f)

    class Files:  # a folder source names its items by path
        paths = files

        def __len__(self):
            return len(files)

    (tmp_path / "rel.txt").write_text("imgs/2.png\tb\n" + str(files[0]) + "\n")
    assert read_subset(tmp_path / "rel.txt", Files()).tolist() == [0, 2]
    (tmp_path / "bad.txt").write_text("imgs/9.png\n")
    with pytest.raises(DataError, match="1 of 1 lines name no image"):
        read_subset(tmp_path / "bad.txt", Files())
