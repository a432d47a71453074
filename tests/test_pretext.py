"""The pretext tasks: rotation, jigsaw and colorization, their helpers, and the emoji source."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from freelabel.backbones import build_backbone
from freelabel.cli import main
from freelabel.config import ConfigError
from freelabel.data.colour import ab_bins, annealed_mean, lab_to_rgb, rgb_to_lab, soft_encode
from freelabel.data.loader import Batch
from freelabel.data.views import ViewConfig, normalise
from freelabel.losses import rebalanced_cross_entropy, rebalancing_weights
from freelabel.methods.colorization import Colorization, LightnessInput
from freelabel.methods.jigsaw import Jigsaw, hamming, maximal_hamming_permutations, puzzle_tiles
from freelabel.methods.rotation import rotation_batch


# ------------------------------------------------------------------------------------------ rotation
def test_rotation_labels_say_where_the_top_left_corner_went():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 0, 0] = 1  # a single bright pixel, top left
    rotated, turns = rotation_batch(x)
    assert turns.tolist() == [0, 1, 2, 3]
    corners = {0: (0, 0), 1: (4, 0), 2: (4, 4), 3: (0, 4)}  # quarter turns counter-clockwise
    for img, r in zip(rotated, turns.tolist()):
        assert img[0].nonzero().tolist() == [list(corners[r])]


@pytest.mark.parametrize("per_image", [1, 2, 3, 4])
def test_each_image_comes_back_in_distinct_rotations_that_its_label_undoes(per_image):
    x = torch.rand(6, 3, 8, 8)
    rotated, turns = rotation_batch(x, per_image)
    assert len(rotated) == len(turns) == 6 * per_image
    seen = {i: [] for i in range(6)}
    for img, r in zip(rotated, turns.tolist()):
        upright = torch.rot90(img, -r, dims=(1, 2))
        (which,) = [i for i in range(6) if torch.equal(upright, x[i])]
        seen[which].append(r)
    assert all(len(rs) == per_image == len(set(rs)) for rs in seen.values())


def test_rotation_refuses_an_impossible_subset():
    from freelabel.methods.rotation import Rotation

    with pytest.raises(ConfigError, match="1, 2, 3 or 4"):
        Rotation(build_backbone("convnet", 1, 28, widths=(8,)), ViewConfig(size=28), per_image=5)


# -------------------------------------------------------------------------------------------- jigsaw
def test_the_permutation_set_has_the_requested_size_and_minimum_hamming_distance():
    perms = maximal_hamming_permutations(100, 9, min_distance=6, generator=torch.Generator().manual_seed(0))
    assert perms.shape == (100, 9)
    assert all(sorted(p) == list(range(9)) for p in perms.tolist())
    d = hamming(perms, perms)
    off_diagonal = d[~torch.eye(100, dtype=torch.bool)]
    assert off_diagonal.min() >= 6
    assert off_diagonal.float().mean() > 8  # the greedy choice spreads them out (the paper: 8.00 on average)
    small = maximal_hamming_permutations(10, 9, min_distance=8, generator=torch.Generator().manual_seed(0))
    assert hamming(small, small)[~torch.eye(10, dtype=torch.bool)].min() >= 8
    with pytest.raises(ConfigError, match="not 100; ask for fewer"):
        maximal_hamming_permutations(100, 9, min_distance=8)
    with pytest.raises(ConfigError, match="between 1 and 24"):
        maximal_hamming_permutations(25, 4)


def test_a_4x4_permutation_set_is_drawn_from_random_candidates_yet_kept_far_apart():
    perms = maximal_hamming_permutations(100, 16, min_distance=12, generator=torch.Generator().manual_seed(0))
    assert perms.shape == (100, 16)
    assert all(sorted(p) == list(range(16)) for p in perms.tolist())
    off_diagonal = hamming(perms, perms)[~torch.eye(100, dtype=torch.bool)]
    assert off_diagonal.min() >= 12  # random pairs of 16-permutations differ in 15 places on average
    with pytest.raises(ConfigError, match="not 100; ask for fewer"):
        maximal_hamming_permutations(100, 16, min_distance=16)


def test_the_permutation_set_comes_from_the_seed_and_is_stored_with_the_weights():
    def build(seed: int) -> Jigsaw:
        torch.manual_seed(seed)
        return Jigsaw(
            build_backbone("convnet", 1, 36, widths=(8,)),
            ViewConfig(size=36),
            permutations=20,
            tile_dim=4,
            hidden_dim=8,
        )

    a, b, c = build(0), build(0), build(1)
    assert torch.equal(a.permutations, b.permutations) and not torch.equal(a.permutations, c.permutations)
    assert torch.equal(a.state_dict()["permutations"], a.permutations)
    assert json.loads(a.artefacts({})["permutations.json"]) == a.permutations.tolist()


def _where(window: torch.Tensor, image: torch.Tensor) -> list[tuple[int, int]]:
    """Top-left corners in ``image [H, W]`` of every window perfectly correlated with ``window``."""
    t = window.shape[-1]
    w = (window - window.mean()).flatten()
    found = []
    for i in range(image.shape[0] - t + 1):
        for j in range(image.shape[1] - t + 1):
            v = image[i : i + t, j : j + t].flatten()
            v = v - v.mean()
            if torch.dot(w, v) / (w.norm() * v.norm()) > 0.9999:
                found.append((i, j))
    return found


def test_tiles_come_from_their_own_cells_with_gaps_and_jittered_channels():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 24, 24)  # cells of 8, tiles of 6: each at one of 3 x 3 places in its cell
    tiles = puzzle_tiles(x, grid=3, tile=0.75)
    assert tiles.shape == (2, 9, 3, 6, 6)
    torch.testing.assert_close(tiles.mean((2, 3, 4)), torch.zeros(2, 9), atol=1e-5, rtol=0)  # each normalised
    corners = set()
    for b in range(2):
        for k in range(9):
            places = {_where(tiles[b, k, ch], x[b, ch])[0] for ch in range(3)}
            assert len(places) == 1  # no channel jitter: the channels move together
            (i, j) = places.pop()
            assert 8 * (k // 3) <= i <= 8 * (k // 3) + 2 and 8 * (k % 3) <= j <= 8 * (k % 3) + 2
            corners.add((i % 8, j % 8))
    assert len(corners) > 3  # random gaps, not one fixed place
    jittered = puzzle_tiles(x, grid=3, tile=0.75, channel_jitter=2)
    spread = [len({_where(jittered[0, k, ch], x[0, ch])[0] for ch in range(3)}) for k in range(9)]
    assert max(spread) > 1  # the colour channels of a tile moved apart


def test_jigsaw_shuffles_tiles_by_the_permutation_it_asks_for():
    torch.manual_seed(0)
    jig = Jigsaw(
        build_backbone("convnet", 1, 36, widths=(8,)), ViewConfig(size=36), permutations=10, tile_dim=4, hidden_dim=8
    )
    x = torch.randn(8, 1, 36, 36)
    out = jig.training_step(Batch(x, views=[x]))
    assert torch.isfinite(out["loss"]) and out["loss"].item() == pytest.approx(np.log(10), rel=0.3)


# --------------------------------------------------------------------------------------------- colour
def test_lab_round_trip_is_exact_and_hits_known_values():
    g = torch.Generator().manual_seed(0)
    rgb = torch.cat([torch.rand(8, 3, 16, 16, generator=g), torch.full((1, 3, 16, 16), 0.04045)])
    rgb[0, :, 0, 0] = 0.0
    rgb[0, :, 0, 1] = 1.0
    assert (lab_to_rgb(rgb_to_lab(rgb)) - rgb).abs().max() < 1e-3
    known = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).T.reshape(1, 3, 4, 1)
    expected = torch.tensor([[100, 0, 0], [0, 0, 0], [53.24, 80.09, 67.20], [32.30, 79.19, -107.86]])
    torch.testing.assert_close(rgb_to_lab(known)[0, :, :, 0].T, expected, atol=0.02, rtol=0)


def test_ab_bins_are_the_in_gamut_cells_of_a_10_grid():
    bins = ab_bins()
    assert 250 <= len(bins) <= 313  # Zhang et al. count 313 with their own gamut test
    assert torch.equal(bins, torch.round(bins / 10) * 10) and (bins == 0).all(1).any()
    assert bins[:, 0].min() >= -90 and bins[:, 1].min() <= -100  # blue reaches far into -b


def test_soft_encoding_spreads_over_five_neighbours_and_decodes_back():
    bins = ab_bins()
    ab = torch.tensor([[3.0, -2.0], [40.0, 40.0], [-20.0, 60.0]]).T.reshape(1, 2, 3, 1)
    target = soft_encode(ab, bins)
    assert target.shape == (1, len(bins), 3, 1)
    torch.testing.assert_close(target.sum(1), torch.ones(1, 3, 1))
    assert ((target > 0).sum(1) == 5).all()
    nearest = torch.cdist(ab[0, :, :, 0].T, bins).argmin(1)
    assert torch.equal(target[0, :, :, 0].argmax(0), nearest)
    logits = torch.full((1, len(bins), 1, 1), -10.0)
    logits[0, nearest[1]] = 10.0
    torch.testing.assert_close(annealed_mean(logits, bins)[0, :, 0, 0], bins[nearest[1]], atol=1e-3, rtol=0)


def test_rebalancing_weights_have_mean_one_under_the_prior():
    prior = torch.rand(313, generator=torch.Generator().manual_seed(0)) ** 4 * 1000
    p = prior / prior.sum()
    for lam in (0.0, 0.5, 1.0):
        w = rebalancing_weights(prior, lam)
        assert (p * w).sum().item() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(rebalancing_weights(prior, 1.0), torch.ones(313))  # lam = 1: no rebalancing
    torch.testing.assert_close(rebalancing_weights(prior, 0.0), 1 / (313 * p))  # lam = 0: every bin equal
    w = rebalancing_weights(prior, 0.5)
    assert (w[p.argsort()].diff() <= 0).all() and w[p.argmin()] > 1 > w[p.argmax()]  # rare colours count more


def test_rebalanced_cross_entropy_weighs_each_place_by_its_bin():
    logits = torch.randn(2, 4, 3, 3)
    target = torch.softmax(torch.randn(2, 4, 3, 3) * 3, 1)
    plain = -(target * torch.log_softmax(logits, 1)).sum(1).mean()
    torch.testing.assert_close(rebalanced_cross_entropy(logits, target, torch.ones(4)), plain)
    weights = torch.tensor([0.0, 1.0, 2.0, 3.0])
    per_place = -(target * torch.log_softmax(logits, 1)).sum(1) * weights[target.argmax(1)]
    torch.testing.assert_close(rebalanced_cross_entropy(logits, target, weights), per_place.mean())


def test_the_colorization_backbone_sees_lightness_only():
    view = ViewConfig(size=16, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25))
    backbone = Colorization.make_backbone("convnet", 3, view, widths=(8, 16)).eval()
    assert isinstance(backbone, LightnessInput)
    lab = torch.zeros(2, 3, 16, 16)
    lab[:, 0] = 60
    lab[1, 1], lab[1, 2] = 20, -25  # the same lightness, the second one coloured
    rgb = lab_to_rgb(lab, clip=False)
    assert rgb.min() >= 0 and rgb.max() <= 1  # in gamut
    x = normalise(rgb, view)  # the evaluation view, as k-NN makes it
    f = backbone(x)
    torch.testing.assert_close(f[0], f[1], atol=1e-4, rtol=0)
    torch.testing.assert_close(backbone.lab(x), lab, atol=1e-3, rtol=0)


def test_colorization_refuses_grey_data_saying_what_to_use(capsys, tmp_path):
    assert (
        main(
            [
                "pretrain",
                "colorization",
                "--data",
                "fashion-mnist",
                "--recipe",
                "colorization-emoji",
                "--steps",
                "1",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "colorization needs colour images" in err and "--data emoji" in err
    assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------- emoji
@pytest.fixture
def emoji_package(tmp_path, monkeypatch):
    """A miniature emoji-datasource-google: 40 emoji in 2 categories, one with two skin tones."""
    root = tmp_path / "emoji"
    (root / "img/google/64").mkdir(parents=True)
    entries = []
    for i in range(40):
        category = ["Smileys & Emotion", "Flags"][i % 2]
        code = f"1F6{i:02X}"
        colour = (255, 200, 0) if i % 2 == 0 else (0, 80, 200)
        Image.new("RGBA", (64, 64), (*colour, 255)).save(root / "img/google/64" / f"{code.lower()}.png")
        entry = {
            "name": f"THING {i}",
            "short_name": f"thing_{i}",
            "unified": code,
            "image": f"{code.lower()}.png",
            "category": category,
            "subcategory": f"sub-{i % 4}",
            "has_img_google": True,
        }
        if i == 0:
            entry["skin_variations"] = {}
            for tone in ("1F3FB", "1F3FF"):
                name = f"{code.lower()}-{tone.lower()}.png"
                Image.new("RGBA", (64, 64), (120, 60, 30, 255)).save(root / "img/google/64" / name)
                entry["skin_variations"][tone] = {"unified": f"{code}-{tone}", "image": name, "has_img_google": True}
        entries.append(entry)
    (root / "emoji.json").write_text(json.dumps(entries))
    (root / "categories.json").write_text(json.dumps({"Smileys & Emotion": {}, "Component": {}, "Flags": {}}))
    monkeypatch.setenv("FREELABEL_EMOJI", str(root))
    return root


def test_emoji_split_is_fixed_by_emoji_and_labels_are_categories(emoji_package):
    from freelabel.data.emoji import emoji, emoji_records
    from freelabel.data.registry import open_dataset

    train, test = emoji("train"), emoji("test")
    assert len(train) + len(test) == 40 and len(test) > 0
    assert not {r.code for r in train.records} & {r.code for r in test.records}
    assert [r.code for r in emoji_records("test")] == [r.code for r in emoji("test").records]  # fixed
    assert train.classes == ["Smileys & Emotion", "Component", "Flags"]
    for ds in (train, test):
        assert [ds.classes[label] for label in ds.labels.tolist()] == [r.category for r in ds.records]
        blue = ds.images[:, 2, 0, 0] > 128
        assert torch.equal(blue, ds.labels == 2)  # the flags were drawn blue
    assert train.records[0].name.startswith("thing ") and train.records[0].subcategory.startswith("sub-")
    tones = [r for r in emoji_records("all", skin_tones=True) if r.skin_tone]
    assert [r.skin_tone for r in tones] == ["light skin tone", "dark skin tone"]
    split = "train" if "1F600" in {r.code for r in train.records} else "test"
    assert {r.code for r in tones} == {"1F600"} and tones[0] in emoji_records(split, skin_tones=True)
    small = open_dataset("emoji", "train", size=16)
    assert small.images.shape[1:] == (3, 16, 16) and small.channels == 3


def test_a_missing_emoji_set_without_npm_says_how_to_get_it(tmp_path, monkeypatch):
    from freelabel.data import emoji
    from freelabel.data.sources import DataError

    monkeypatch.setenv("FREELABEL_EMOJI", str(tmp_path / "none"))
    monkeypatch.setattr(emoji.shutil, "which", lambda name: None)
    with pytest.raises(DataError, match="npm is missing.*scripts/setup.sh"):
        emoji.emoji("train")


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    """Two classes of 32 px colour pictures: warm discs and cool squares on white."""
    root = tmp_path_factory.mktemp("colour")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    for label, name in enumerate(["discs", "squares"]):
        (root / name).mkdir()
        for i in range(30):
            img = np.full((32, 32, 3), 255, np.uint8)
            cy, cx, r = rng.integers(10, 22), rng.integers(10, 22), rng.integers(5, 9)
            if label == 0:
                img[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = (rng.integers(180, 255), rng.integers(0, 120), 0)
            else:
                img[(abs(yy - cy) < r) & (abs(xx - cx) < r)] = (0, rng.integers(0, 160), 255)
            Image.fromarray(img).save(root / name / f"{i:02d}.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["classification", "regression"])
def test_tiny_colorization_run_saves_its_grid_and_evaluates_on_lightness(colour_folder, tmp_path, capsys, loss):
    run = tmp_path / "run"
    assert (
        main(
            [
                "pretrain",
                "colorization",
                "--data",
                str(colour_folder),
                "--recipe",
                "colorization-emoji",
                "--steps",
                "3",
                "--batch-size",
                "16",
                "--out",
                str(run),
                "--set",
                "log_every=1",
                "--set",
                "backbone.args.widths=[16,32]",
                "--set",
                "method_args.hidden_dim=16",
                "--set",
                f"method_args.loss={loss}",
            ]
        )
        == 0
    )
    grid = np.asarray(Image.open(run / "colorization.png"))
    assert grid.shape == (3 * 33 + 1, 16 * 33 + 1, 3)  # rows: input lightness, prediction, truth; 16 images
    lightness_row, truth_row = grid[1:33, 1:33].astype(int), grid[67:99, 1:33].astype(int)
    assert np.ptp(lightness_row, axis=2).max() <= 2 < np.ptp(truth_row, axis=2).max()  # grey input, colour truth
    metrics = json.loads((run / "metrics.json").read_text())["pretrain"]
    assert metrics["steps"] == 3 and np.isfinite(metrics["final_loss"])
    one_channel = build_backbone("convnet", 1, 32, widths=(16, 32)).state_dict()
    assert set(load_file(str(run / "backbone.safetensors"))) == {f"net.{k}" for k in one_channel}
    assert main(["eval", "knn", str(run), "--baselines"]) == 0
    knn = json.loads((run / "metrics.json").read_text())["knn"]
    assert knn["test_images"] == 12 and 0 <= knn["trained"]["top1_k20"] <= 100 and "random_init" in knn


@pytest.mark.slow
@pytest.mark.parametrize("grid", [3, 4])
def test_tiny_jigsaw_run_stores_its_permutations(tmp_path, grid):
    run = tmp_path / "run"
    assert (
        main(
            [
                "pretrain",
                "jigsaw",
                "--steps",
                "3",
                "--batch-size",
                "16",
                "--out",
                str(run),
                "--set",
                "backbone.args.widths=[16,32]",
                "--set",
                "method_args.permutations=30",
                "--set",
                f"method_args.grid={grid}",
                "--set",
                "method_args.tile_dim=8",
                "--set",
                "method_args.hidden_dim=32",
            ]
        )
        == 0
    )
    perms = json.loads((run / "permutations.json").read_text())
    assert len(perms) == 30 and all(sorted(p) == list(range(grid * grid)) for p in perms)
    ckpt = load_file(str(run / "checkpoints" / "step-00000003" / "model.safetensors"))
    assert ckpt["permutations"].tolist() == perms
