"""The hostile-input corpus of tests/hostile.py through decoding, training (every method), evaluation,
the index, zero-shot and shards: no traceback, every skip counted, memory bounded."""

import csv
import io
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from hostile import (
    BATCH,
    NON_UTF8,
    SPARSE,
    broken_files,
    caption_list,
    good_image,
    odd_entries,
    training_folder,
)
from PIL import Image

from freelabel.cli import main
from freelabel.data.images import MAX_PIXELS, BadImage, decode, load_image
from freelabel.methods import METHODS

VIT = ["backbone.args.depth=1", "backbone.args.embed_dim=32", "backbone.args.num_heads=2", "backbone.args.patch_size=4"]
CONV = ["backbone.args.widths=[8,16]"]
TINY = {  # method: (recipe, settings)
    "simclr": ("simclr-fashion-mnist", CONV + ["method_args.hidden_dim=16"]),
    "mocov2": (
        "mocov2-fashion-mnist",
        CONV + ["method_args.hidden_dim=16", "method_args.queue_size=32", "method_args.bn_splits=2"],
    ),
    "mocov3": ("mocov3-fashion-mnist", CONV + ["method_args.hidden_dim=16", "method_args.proj_dim=8"]),
    "byol": ("byol-fashion-mnist", CONV + ["method_args.hidden_dim=16", "method_args.proj_dim=8"]),
    "dino": (
        "dino-fashion-mnist",
        CONV
        + [
            "method_args.hidden_dim=16",
            "method_args.out_dim=32",
            "method_args.bottleneck_dim=8",
            "method_args.local_crops=2",
            "method_args.local_size=8",
        ],
    ),
    "dinov2": (
        "dinov2-fashion-mnist",
        [
            "backbone.name=vit_tiny",
            *VIT,
            "method_args.hidden_dim=16",
            "method_args.out_dim=32",
            "method_args.bottleneck_dim=8",
            "method_args.local_crops=2",
            "method_args.local_size=8",
        ],
    ),
    "barlowtwins": ("barlowtwins-fashion-mnist", CONV + ["method_args.hidden_dim=16", "method_args.proj_dim=16"]),
    "vicreg": ("vicreg-fashion-mnist", CONV + ["method_args.hidden_dim=16", "method_args.proj_dim=16"]),
    "rotation": ("rotation-fashion-mnist", CONV + ["method_args.hidden_dim=16", "method_args.per_image=2"]),
    "jigsaw": (
        "jigsaw-fashion-mnist",
        CONV + ["method_args.permutations=10", "method_args.tile_dim=4", "method_args.hidden_dim=16"],
    ),
    "colorization": ("colorization-emoji", CONV + ["method_args.hidden_dim=16"]),
    "mae": (
        "mae-fashion-mnist",
        [*VIT, "method_args.decoder_dim=16", "method_args.decoder_depth=1", "method_args.decoder_heads=2"],
    ),
    "ijepa": (
        "ijepa-fashion-mnist",
        [
            *VIT,
            "method_args.predictor_dim=16",
            "method_args.predictor_depth=1",
            "method_args.predictor_heads=2",
            "views.size=32",  # an 8 x 8 grid: room for the target blocks and a context beside them
        ],
    ),
    "clip": (
        "clip-emoji-captions",
        CONV + ["method_args.embed_dim=16", "method_args.text_args={width: 16, layers: 1, heads: 2, max_length: 16}"],
    ),
    "siglip": (
        "siglip-emoji-captions",
        CONV + ["method_args.embed_dim=16", "method_args.text_args={width: 16, layers: 1, heads: 2, max_length: 16}"],
    ),
}


def pretrain_args(method: str, data, out, batch: int = BATCH, steps: int = 1) -> list[str]:
    recipe, sets = TINY[method]
    flags = [a for s in ["views.size=16", "data.workers=0", "log_every=1", *sets] for a in ("--set", s)]
    return [
        "pretrain",
        method,
        "--recipe",
        recipe,
        "--data",
        str(data),
        "--steps",
        str(steps),
        "--batch-size",
        str(batch),
        "--out",
        str(out),
        *flags,
    ]


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len([x for x in err.splitlines() if x.startswith("freelabel")]) == 1, err
    return err


# ------------------------------------------------------------------------------------------- decoding
def test_every_broken_kind_is_one_bad_image_error_and_bombs_are_refused_before_decoding(tmp_path):
    for name, data in broken_files().items():
        with pytest.raises(BadImage):
            decode(data)
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BadImage):
            load_image(tmp_path / name, 16)
    with pytest.raises(BadImage, match="megapixels is over the limit"):
        decode(broken_files()["bomb_under_pil_limit.png"])
    with pytest.raises(BadImage, match="aspect ratio 30000:1"):
        decode(broken_files()["bomb_aspect.png"])
    odd_entries(tmp_path)
    for name in ("folder.png", "loop.png", "dangling.png", "fifo.png"):  # never opened, never blocks
        with pytest.raises(BadImage, match="not a regular file"):
            decode(tmp_path / name)
    assert decode(good_image(1)).shape == (3, 24, 24) and decode(good_image(1), channels=1).shape == (1, 24, 24)


def test_a_large_jpeg_is_drafted_to_the_size_needed_instead_of_refused(tmp_path):
    side = int(math.sqrt(MAX_PIXELS)) + 800  # over the limit at full size
    buf = io.BytesIO()
    Image.new("L", (side, side), 128).save(buf, format="JPEG")
    with pytest.raises(BadImage, match="megapixels"):
        decode(buf.getvalue())
    assert decode(buf.getvalue(), draft_to=64).shape[-1] < side // 4  # decoded at 1/8 scale
    assert load_image(buf.getvalue(), 32).shape == (3, 32, 32)


# ------------------------------------------------------------------------------------------- training
def test_every_method_has_a_tiny_hostile_run():
    assert set(TINY) == set(METHODS)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(TINY))
def test_unreadable_files_give_their_places_to_readable_ones_for_every_method(method, tmp_path):
    """4 good images among 12 files at batch 2: two full batches an epoch (the first made of the 4th and
    7th file read), three steps across two epochs, every unreadable file counted once."""
    places, batch = SPARSE["good"], SPARSE["batch"]
    data = (
        caption_list(tmp_path / "captions", places)
        if method in ("clip", "siglip")
        else training_folder(tmp_path / "images", places)
    )
    run = tmp_path / "run"
    assert main(pretrain_args(method, data, run, batch=batch, steps=3)) == 0
    m = json.loads((run / "metrics.json").read_text())["pretrain"]
    assert m["steps"] == 3 and m["images_seen"] == 3 * batch and math.isfinite(m["final_loss"])
    assert m["skipped_files"] == 12 - len(places) and len(set(m["skipped_examples"])) == 8
    assert m["epochs"] == 1.5  # of the 4 readable images


def test_the_loader_fills_each_batch_from_the_next_readable_files(tmp_path):
    from freelabel.data.loader import batches, epoch_order
    from freelabel.data.registry import open_dataset

    folder = training_folder(tmp_path / "images", SPARSE["good"])
    ds = open_dataset(str(folder), "train", size=16)
    failed: list[str] = []
    got = list(batches(ds, 2, seed=0, epoch=0, failed=failed.extend))
    order = epoch_order(len(ds), 0, 0).tolist()
    assert [b.index.tolist() for b in got] == [[3, 6], [9, 11]]  # places in the epoch's order
    assert [b.labels.tolist() for b in got] == [[-1, -1]] * 2 and len(got[0].images) == 2
    assert sorted(failed) == sorted(str(ds.paths[order[p]]) for p in range(12) if p not in SPARSE["good"])
    # resumed after the first step: from the place after its last image, the same second batch
    resumed = list(batches(ds, 2, seed=0, epoch=0, start=1, cursor=7))
    assert [b.index.tolist() for b in resumed] == [[9, 11]] and torch.equal(resumed[0].images, got[1].images)


@pytest.mark.parametrize("good", [0, 1])
def test_fewer_readable_images_than_a_batch_is_one_clear_line(good, tmp_path, capsys):
    folder = tmp_path / "broken"
    folder.mkdir()
    for name, data in broken_files().items():
        (folder / name).write_bytes(data)
    for i in range(good):
        (folder / f"good{i}.png").write_bytes(good_image(i))
    err = one_line_error(capsys, pretrain_args("simclr", folder, tmp_path / "run", batch=2))
    assert (
        f"10 of its {10 + good} images cannot be read" in err
        and f"the {good} readable images fill no batch of 2" in err
    )
    assert "--batch-size" in err


# ------------------------------------------------------------------------------------------- evaluation, index, zero-shot
@pytest.fixture(scope="module")
def hostile_runs(tmp_path_factory):
    """A simclr run and a clip run trained on the hostile folder and caption list, and a labelled
    hostile folder (class a/ and b/, each with good and broken files)."""
    root = tmp_path_factory.mktemp("hostile")
    folder, pairs = training_folder(root / "images"), caption_list(root / "captions")
    assert main(pretrain_args("simclr", folder, root / "simclr")) == 0
    assert main(pretrain_args("clip", pairs, root / "clip")) == 0
    labelled = root / "labelled"
    for c in "ab":
        (labelled / c).mkdir(parents=True)
        for i in range(6):
            (labelled / c / f"{i}-{NON_UTF8}.png").write_bytes(good_image(i + (c == "b") * 10))
        for name, data in broken_files().items():
            (labelled / c / name).write_bytes(data)
    odd_entries(labelled / "a")
    return root, folder, pairs, labelled


@pytest.mark.slow
def test_knn_index_and_zeroshot_skip_and_count_broken_files_and_write_non_utf8_names_losslessly(
    hostile_runs, capsysbinary
):
    root, folder, pairs, labelled = hostile_runs
    assert main(["eval", "knn", str(root / "simclr"), "--data", str(labelled), "-k", "1", "3"]) == 0
    assert b"k=3" in capsysbinary.readouterr().out
    # the index: every broken file counted, all-broken batches of 2 skipped, names written as their bytes
    index = root / "index"
    assert (
        main(
            ["index", "build", str(labelled), "--model", str(root / "simclr"), "--out", str(index), "--batch-size", "2"]
        )
        == 0
    )
    out = capsysbinary.readouterr().out
    assert b"12 images" in out and b"20 unreadable" in out
    assert main(["index", "search", str(index), "--image", str(labelled / "a" / f"0-{NON_UTF8}.png"), "-k", "3"]) == 0
    out = capsysbinary.readouterr().out
    assert os.fsencode(f"0-{NON_UTF8}.png") in out and b"\\udc" not in out
    for bad in ("bomb_pixels.png", "bomb_aspect.png", "folder.png", "fifo.png"):
        assert main(["index", "search", str(index), "--image", str(labelled / "a" / bad)]) == 2
        err = capsysbinary.readouterr().err
        assert b"cannot read the query image" in err and b"Traceback" not in err
    # zero-shot to a CSV and to stdout: one row per readable image, names as their bytes
    csv_out = root / "zs.csv"
    assert (
        main(["zeroshot", str(labelled), "--labels", "a,b", "--model", str(root / "clip"), "--out", str(csv_out)]) == 0
    )
    capsysbinary.readouterr()
    rows = list(csv.reader(io.StringIO(csv_out.read_bytes().decode("utf-8", errors="surrogateescape"))))
    assert len(rows) == 1 + 12 and all(os.path.exists(r[0]) for r in rows[1:])
    assert os.fsencode(str(labelled / "a" / f"0-{NON_UTF8}.png")) in csv_out.read_bytes()
    assert main(["zeroshot", str(labelled), "--labels", "a,b", "--model", str(root / "clip")]) == 0
    assert csv_out.read_bytes() == capsysbinary.readouterr().out


def test_features_and_embeddings_skip_batches_where_every_image_is_broken(tmp_path):
    """The one extractor every protocol, the index and zero-shot use: unreadable images are left out (a
    batch may lose them all) and each row keeps its item's place, so rows map back to files."""
    from freelabel.backbones import build_backbone
    from freelabel.data.sources import DataError, ImageFiles
    from freelabel.data.views import ViewConfig
    from freelabel.encoder import Encoder
    from freelabel.evaluate.features import extract

    folder = training_folder(tmp_path / "images")
    paths = sorted(p for p in folder.iterdir())
    ds = ImageFiles(paths, list(range(len(paths))), [], 16)
    pixels = extract(None, ds, size=16, batch_size=2)
    assert len(pixels.x) == len(pixels.labels) == BATCH + 1
    assert (
        pixels.index.tolist()
        == pixels.labels.tolist()
        == [i for i, p in enumerate(paths) if p.suffix == ".png" and ("good" in p.name or NON_UTF8 in p.name)]
    )
    encoder = Encoder("tiny", build_backbone("convnet", 3, 16, widths=(4, 8)), ViewConfig(size=16))
    for kind in ("pooled", "embedding", "tokens"):
        found = extract(encoder, ds, kind, batch_size=1)
        assert len(found.x) == BATCH + 1 and found.index.tolist() == pixels.index.tolist()
    broken = ImageFiles(
        paths[:0] + [p for p in paths if "good" not in p.name and NON_UTF8 not in p.name], [0] * 7, [], 16
    )
    with pytest.raises(DataError, match="none of the 7 images"):
        extract(None, broken, size=16)
    with pytest.raises(DataError, match="none of the 7 images"):
        extract(encoder, broken, "embedding")


# ------------------------------------------------------------------------------------------- shards and caption lists
def test_shards_pack_only_readable_images(tmp_path, caplog):
    pairs = caption_list(tmp_path / "captions")
    assert main(["shards", "make", str(pairs), str(tmp_path / "shards")]) == 0
    index = json.loads((tmp_path / "shards" / "shards.json").read_text())
    assert sum(e["samples"] for e in index["shards"]) == BATCH + 1
    assert f"skipped {2 * BATCH - 1} unreadable files" in caplog.text


def test_caption_lists_stay_in_their_folder_unless_allowed(tmp_path, capsys):
    from freelabel.data.captions import read_pairs

    (tmp_path / "outside.png").write_bytes(good_image(1))
    folder = tmp_path / "list"
    folder.mkdir()
    (folder / "in.png").write_bytes(good_image(2))
    os.symlink(tmp_path / "outside.png", folder / "link.png")
    for value in ("../outside.png", str(tmp_path / "outside.png"), "link.png", "sub/../../outside.png"):
        (folder / "pairs.csv").write_text(f"image,caption\nin.png,inside\n{value},outside\n")
        err = one_line_error(capsys, ["shards", "make", str(folder / "pairs.csv"), str(tmp_path / f"s{len(value)}")])
        assert "is outside" in err and "--allow-outside" in err
        assert len(read_pairs(str(folder / "pairs.csv"), allow_outside=True)) == 2
    (folder / "pairs.jsonl").write_text('{"image": "../outside.png", "caption": "x"}\n')
    assert "is outside" in one_line_error(capsys, ["shards", "make", str(folder / "pairs.jsonl"), str(tmp_path / "j")])
    assert main(["shards", "make", str(folder / "pairs.jsonl"), str(tmp_path / "j"), "--allow-outside"]) == 0
    for value, says in (
        ("in", "has no file extension"),
        ("pairs.csv", "is not an image file"),
        ("x.PY", "not an image"),
    ):
        (folder / "bad.csv").write_text(f"image,caption\n{value},x\n")
        assert says in one_line_error(capsys, ["shards", "make", str(folder / "bad.csv"), str(tmp_path / "b")])


# ------------------------------------------------------------------------------------------- memory
@pytest.mark.slow
def test_bombs_do_not_blow_up_memory(tmp_path):
    """Training and indexing a folder of bombs stay near the memory of a run on a clean folder."""

    def peak_mb(folder, name) -> float:
        code = (
            "import resource\n"
            "from freelabel.cli import main\n"
            f"assert main({pretrain_args('simclr', folder, tmp_path / name)!r}) == 0\n"
            f"assert main(['index', 'build', {str(folder)!r}, '--model', {str(tmp_path / name)!r}, '--out', "
            f"{str(tmp_path / (name + '-index'))!r}]) == 0\n"
            "print('peak', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"  # kB on Linux; decoding is in-process
        )
        r = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
        )
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        return int(r.stdout.split("peak")[-1]) / 1024

    clean = tmp_path / "clean"
    clean.mkdir()
    for i in range(3 * BATCH):
        (clean / f"{i:02d}.png").write_bytes(good_image(i))
    baseline = peak_mb(clean, "clean")
    hostile = peak_mb(training_folder(tmp_path / "hostile"), "hostile")
    # decoding the 20000 x 20000 bomb alone would take 400 MB (1.2 GB as RGB)
    print(f"peak RSS: clean folder {baseline:.0f} MB, hostile folder {hostile:.0f} MB")
    assert hostile < baseline + 150, (baseline, hostile)
