import json
import os

import numpy as np
import pytest
import skimage.data
import tiny_models
import torch
import torch.nn.functional as F
from PIL import Image

from freelabel.cli import main
from freelabel.config import load_recipe, resolve
from freelabel.data.sources import load_image
from freelabel.encoder import load_encoder
from freelabel.methods import METHODS
from freelabel.pipelines.search import (
    MANIFEST,
    SearchError,
    build_index,
    evaluate_index,
    open_index,
    precision_at_k,
    search,
)
from freelabel.pretrained import PretrainedError
from freelabel.run import save_backbone, save_config


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models.Folders(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def photos(tmp_path):
    """Real photos in two class folders, one broken file and one text file."""
    root = tmp_path / "photos"
    (root / "cats").mkdir(parents=True)
    (root / "things").mkdir()
    Image.fromarray(skimage.data.chelsea()).save(root / "cats" / "chelsea.png")
    Image.fromarray(skimage.data.chelsea()[::-1]).save(root / "cats" / "upside_down.jpg")
    Image.fromarray(skimage.data.coffee()).save(root / "things" / "coffee.jpg")
    Image.fromarray(skimage.data.astronaut()).save(root / "things" / "astronaut.png")
    (root / "things" / "broken.png").write_text("not a PNG")
    (root / "notes.txt").write_text("ignored")
    return root


def direct(encoder, path) -> torch.Tensor:
    """The embedding of one file computed without the index: the encoder on the decoded image."""
    return encoder.encode_image(load_image(path, encoder.view.size, encoder.in_chans)[None])[0]


def test_build_then_update_incrementally(models, photos, tmp_path):
    out = tmp_path / "index"
    r = build_index(photos, models["clip"], out, device="cpu")
    assert (r["rows"], r["embedded"], r["kept"], r["removed"]) == (4, 4, 0, 0)
    assert r["failed"] == [str(photos / "things" / "broken.png")]
    idx = open_index(out)
    assert idx.embeddings.shape == (4, 16) and torch.allclose(idx.embeddings.norm(dim=1), torch.ones(4))
    assert idx.meta["view"] == {
        "size": 32,
        "mean": list(tiny_models.tf.CLIPImageProcessor().image_mean),
        "std": list(tiny_models.tf.CLIPImageProcessor().image_std),
    }
    rows = {row["path"]: i for i, row in enumerate(idx.rows)}
    encoder = load_encoder(models["clip"], device="cpu")
    assert torch.allclose(
        idx.embeddings[rows["things/coffee.jpg"]], direct(encoder, photos / "things/coffee.jpg"), atol=1e-6
    )
    assert build_index(photos, models["clip"], out, device="cpu")["embedded"] == 0  # nothing changed
    # add one file, delete one, rewrite one (new size and mtime)
    Image.fromarray(skimage.data.rocket()).save(photos / "things" / "rocket.png")
    os.remove(photos / "things" / "astronaut.png")
    Image.fromarray(skimage.data.chelsea()[:, ::-1]).save(photos / "cats" / "upside_down.jpg")
    r = build_index(photos, models["clip"], out, device="cpu")
    assert (r["rows"], r["embedded"], r["kept"], r["removed"]) == (4, 2, 2, 1)
    new = open_index(out)
    paths = [row["path"] for row in new.rows]
    assert sorted(paths) == ["cats/chelsea.png", "cats/upside_down.jpg", "things/coffee.jpg", "things/rocket.png"]
    for i, p in enumerate(paths):
        assert torch.allclose(new.embeddings[i], direct(encoder, photos / p), atol=1e-6), p


def test_search_by_image_and_text(models, photos, tmp_path):
    out = tmp_path / "index"
    build_index(photos, models["clip"], out, device="cpu")
    hits = search(out, image=photos / "things" / "coffee.jpg", k=3, device="cpu")
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["path"] == str(photos.resolve() / "things" / "coffee.jpg") and hits[0]["score"] == pytest.approx(
        1, abs=1e-4
    )
    assert hits[0]["label"] == "things" and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    idx = open_index(out)
    text = load_encoder(models["clip"], device="cpu").encode_text(["a photo of a cat"])
    scores = (text @ idx.embeddings.T)[0]
    hits = search(out, text="a photo of a cat", k=4, device="cpu")
    want = sorted(((round(float(s), 4), r["path"]) for s, r in zip(scores, idx.rows)), reverse=True)
    assert [(h["score"], h["path"]) for h in hits] == [(s, str(photos.resolve() / p)) for s, p in want]


def test_errors(models, photos, tmp_path):
    out = tmp_path / "dino-index"
    build_index(photos, models["dinov2"], out, device="cpu")
    with pytest.raises(PretrainedError, match="has no text tower: use a CLIP or SigLIP model"):
        search(out, text="a cat", device="cpu")
    with pytest.raises(SearchError, match="one of them"):
        search(out, device="cpu")
    with pytest.raises(SearchError, match="give another --out"):
        build_index(photos, models["clip"], out, device="cpu")
    with pytest.raises(SearchError, match="is not an index"):
        search(tmp_path, image=photos / "cats" / "chelsea.png")
    with pytest.raises(SearchError, match="cannot read the query image"):
        search(out, image=photos / "things" / "broken.png", device="cpu")
    meta = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**meta, "build": "another"}))  # as if a crash came between the two writes
    with pytest.raises(SearchError, match="interrupted update"):
        open_index(out)


def test_a_freelabel_run_indexes_an_embedded_split(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    cfg = resolve(
        load_recipe("simclr-fashion-mnist"),
        {"method": "simclr", "data.channels": 1, "backbone.args": {"widths": [8, 16]}},
    )
    save_config(run, cfg)
    torch.manual_seed(0)
    backbone = METHODS["simclr"].make_backbone("convnet", 1, cfg.views, widths=[8, 16])
    save_backbone(run, backbone.state_dict())
    from freelabel.data import registry, sources

    small = sources.fashion_mnist("test")
    small.images, small.labels = small.images[:200], small.labels[:200]
    monkeypatch.setitem(registry.NAMED, "fashion-mnist", lambda split: small)
    r = build_index("fashion-mnist", run, tmp_path / "index", device="cpu")
    assert r["rows"] == r["embedded"] == 200 and r["images_per_s"] > 0
    idx = open_index(tmp_path / "index")
    assert idx.rows[3] == {"path": "fashion-mnist/test/000003", "label": sources.FASHION_MNIST_CLASSES[small.labels[3]]}
    x = (small.images[:5].float() / 255 - 0.286) / 0.353  # the run's evaluation view: 28 px, its mean and std
    assert torch.allclose(idx.embeddings[:5], F.normalize(backbone.eval()(x), dim=-1), atol=1e-5)
    with pytest.raises(PretrainedError, match="has no text tower"):
        search(tmp_path / "index", text="a shoe", device="cpu")
    result = evaluate_index(tmp_path / "index", k=10)
    assert result["by_class"] == precision_at_k(idx.embeddings, [row["label"] for row in idx.rows], 10)["by_class"]
    assert list(result["by_class"]) == sources.FASHION_MNIST_CLASSES  # the data set's order
    assert result["mean"] > 20  # a random CNN already groups Fashion-MNIST well above the 10% of chance


def test_precision_at_k_against_a_direct_count():
    g = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(30, 4, generator=g), dim=1)
    labels = [["a", "b", "c"][i % 3] for i in range(30)]
    got = precision_at_k(emb, labels, k=5)
    sim = emb @ emb.T
    hits = []
    for i in range(30):
        others = sorted((j for j in range(30) if j != i), key=lambda j: -float(sim[i, j]))[:5]
        hits.append(np.mean([labels[j] == labels[i] for j in others]))
    for c in "abc":
        assert got["by_class"][c] == pytest.approx(100 * np.mean([h for h, y in zip(hits, labels) if y == c]), abs=0.01)
    assert got["mean"] == pytest.approx(100 * np.mean(hits), abs=0.01)
    with pytest.raises(SearchError, match="needs class labels"):
        precision_at_k(emb, [None] * 30)


@pytest.mark.slow
def test_cli(models, photos, tmp_path, capsys):
    out = str(tmp_path / "index")
    assert main(["index", "build", str(photos), "--model", str(models["clip"]), "--out", out]) == 0
    assert "4 images (4 embedded, 0 unchanged, 0 removed, 1 unreadable)" in capsys.readouterr().out
    assert main(["index", "search", out, "--image", str(photos / "cats" / "chelsea.png"), "-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 2 and hits[0]["path"].endswith("cats/chelsea.png")
    assert main(["index", "search", out, "--text", "a cat", "-k", "1"]) == 0
    assert capsys.readouterr().out.startswith("  1  ")
    assert main(["index", "eval", out, "-k", "1"]) == 0
    assert "precision@1 (image-to-image, query excluded) over 4 images" in capsys.readouterr().out
    assert main(["index", "search", str(tmp_path), "--text", "a cat"]) == 2
    assert "is not an index" in capsys.readouterr().err
