import pytest
import skimage.data
import tiny_models
import torch
import torch.nn.functional as F
from PIL import Image

from freelabel.pipelines import ann
from freelabel.pipelines.search import build_index, open_index, search


def clustered(n: int, dim: int, clusters: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g)
    return F.normalize(
        centres[torch.randint(clusters, (n,), generator=g)] + 0.5 * torch.randn(n, dim, generator=g), dim=1
    )


def test_graph_recall_against_exact_search():
    x = clustered(5000, 64, 50)
    queries = F.normalize(x[:100] + 0.1 * torch.randn(100, 64), dim=1)
    graph = ann.Ann(64).add(x[:3000]).add(x[3000:])  # grown in two steps, ids continue
    assert len(graph) == 5000
    scores, ids = graph.search(queries, 10)
    exact_scores, exact_ids = ann.exact_search(queries, x, 10)
    recall = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ids, exact_ids)) / exact_ids.numel()
    assert recall >= 0.95
    found = scores[ids == exact_ids]
    assert torch.allclose(found, exact_scores[ids == exact_ids], atol=1e-5)  # scores are the cosine similarities
    assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_a_graph_smaller_than_k_pads():
    scores, ids = ann.Ann(8).add(clustered(3, 8, 1)).search(clustered(2, 8, 1, seed=1), 5)
    assert (ids[:, 3:] == -1).all() and torch.isinf(scores[:, 3:]).all() and (ids[:, :3] >= 0).all()


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    for name in ("chelsea", "coffee", "astronaut"):
        Image.fromarray(getattr(skimage.data, name)()).save(root / f"{name}.png")
    return root


@pytest.mark.slow
def test_index_uses_a_graph_above_the_threshold_and_grows_it(photos, tmp_path, monkeypatch):
    monkeypatch.setattr(ann, "THRESHOLD", 2)
    loads = []
    load = ann.Ann.load
    monkeypatch.setattr(ann.Ann, "load", classmethod(lambda cls, p: loads.append(p.name) or load.__func__(cls, p)))
    model = tiny_models.Folders(tmp_path / "tiny")["dinov2"]
    out = tmp_path / "index"
    build_index(photos, model, out, device="cpu")
    first = open_index(out).meta["build"]
    assert [p.name for p in out.glob("ann-*")] == [f"ann-{first}.faiss"]
    Image.fromarray(skimage.data.rocket()).save(photos / "rocket.png")
    build_index(photos, model, out, device="cpu")  # one new image: the graph is extended, not rebuilt
    idx = open_index(out)
    assert loads == [f"ann-{first}.faiss"] and [p.name for p in out.glob("ann-*")] == [f"ann-{idx.meta['build']}.faiss"]
    assert idx.rows[-1]["path"] == "rocket.png" and len(ann.Ann.load(ann.graph_file(out, idx.meta["build"]))) == 4
    hits = search(out, image=photos / "coffee.png", k=4, device="cpu")
    exact = sorted(
        ((idx.embeddings @ idx.embeddings[[r["path"] for r in idx.rows].index("coffee.png")]).tolist()), reverse=True
    )
    assert hits[0]["path"].endswith("coffee.png") and [h["score"] for h in hits] == pytest.approx(exact, abs=1e-4)
    (photos / "chelsea.png").unlink()  # a removed image: the graph is rebuilt from the remaining rows
    loads.clear()
    build_index(photos, model, out, device="cpu")
    build = open_index(out).meta["build"]
    assert loads == [] and len(ann.Ann.load(ann.graph_file(out, build))) == 3
    monkeypatch.setattr(ann, "THRESHOLD", 10)  # below the threshold: no graph, exact search
    (photos / "coffee.png").unlink()
    build_index(photos, model, out, device="cpu")
    assert list(out.glob("ann-*")) == []
