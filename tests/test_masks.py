import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from freelabel.pipelines.masks import nms, overlay, rle_decode, rle_encode


def _random_masks():
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (1, 9), (7, 1), (3, 5), (31, 17), (64, 129)]:
        yield np.zeros((h, w), bool)
        yield np.ones((h, w), bool)
        for p in (0.02, 0.5, 0.98):
            yield rng.random((h, w)) < p
        blob = np.zeros((h, w), bool)
        blob[h // 4 : h - h // 4, w // 3 : w - w // 5] = True
        yield blob


@pytest.mark.parametrize("mask", list(_random_masks()), ids=lambda m: f"{m.shape}-{m.mean():.2f}")
def test_rle_round_trip(mask):
    rle = rle_encode(mask)
    assert rle["size"] == list(mask.shape)
    back = rle_decode(rle)
    assert back.dtype == bool and back.shape == mask.shape and (back == mask).all()
    assert (rle_decode(rle_encode(torch.from_numpy(mask))) == mask).all()  # tensors too


def test_rle_matches_pycocotools_strings():
    """Strings that pycocotools 2.0.11's ``mask.encode`` gave for these masks."""
    m = np.zeros((5, 7), bool)
    m[1:4, 2:6] = True
    m[0, 0] = m[4, 6] = True
    assert rle_encode(m)["counts"] == "01:2H000003N"
    r = np.random.default_rng(7).random((9, 11)) < 0.5
    assert rle_encode(r)["counts"] == "1110010O012ON0040N1N01OO013O20L001001O40J2010N12ON00"
    big = np.zeros((300, 200), bool)
    big[50:250, 20:180] = True
    counts = rle_encode(big)["counts"]
    assert counts.startswith("Rm5X6T3") and counts.endswith("ni5") and set(counts[7:-3]) == {"0"}
    assert rle_encode(np.zeros((4, 3), bool))["counts"] == "<"
    assert rle_encode(np.ones((4, 3), bool))["counts"] == "0<"


def test_rle_is_column_major_and_decodes_uncompressed_counts():
    m = np.array([[1, 0, 0], [1, 1, 0]], bool)  # columns: (1,1) (0,1) (0,0) -> runs 0,2,1,1,2
    assert (rle_decode({"size": [2, 3], "counts": [0, 2, 1, 1, 2]}) == m).all()
    assert rle_decode(rle_encode(m))[1, 1]
    with pytest.raises(ValueError, match="sum to 5, not 2x3=6"):
        rle_decode({"size": [2, 3], "counts": [0, 2, 1, 2]})


def test_rle_agrees_with_pycocotools_when_installed():
    mask_api = pytest.importorskip("pycocotools.mask")
    for m in _random_masks():
        ref = mask_api.encode(np.asfortranarray(m.astype(np.uint8)))
        assert rle_encode(m)["counts"] == ref["counts"].decode()
        assert (rle_decode({"size": ref["size"], "counts": ref["counts"].decode()}) == m).all()


def _greedy_nms(boxes, scores, labels, thr):
    """Direct computation: visit boxes best first, keep one unless a kept box of its label overlaps it > thr."""
    kept = []
    for i in sorted(range(len(scores)), key=lambda i: -float(scores[i])):
        if all(labels[j] != labels[i] or box_iou(boxes[i : i + 1], boxes[j : j + 1]).item() <= thr for j in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("thr", [0.1, 0.3, 0.5, 0.8])
def test_nms_matches_greedy_loop(thr):
    g = torch.Generator().manual_seed(int(thr * 10))
    xy = torch.rand(60, 2, generator=g) * 80
    boxes = torch.cat([xy, xy + 10 + torch.rand(60, 2, generator=g) * 30], 1)
    scores = torch.rand(60, generator=g)
    labels = [("cat", "dog", "sky")[i % 3] for i in range(60)]
    assert nms(boxes, scores, labels, thr).tolist() == _greedy_nms(boxes, scores, labels, thr)
    agnostic = nms(boxes, scores, None, thr).tolist()
    assert agnostic == _greedy_nms(boxes, scores, ["all"] * 60, thr)
    assert len(agnostic) < len(nms(boxes, scores, labels, thr))  # labels only suppress their own kind


def test_overlay_tints_masks_and_leaves_the_rest():
    image = torch.full((3, 40, 50), 100, dtype=torch.uint8)
    masks = torch.zeros(2, 40, 50, dtype=torch.bool)
    masks[0, 5:15, 5:15] = True
    masks[1, 20:35, 30:45] = True
    boxes = torch.tensor([[5.0, 5, 15, 15], [30, 20, 45, 35]])
    points = torch.tensor([[45.0, 5.0], [5.0, 35.0]])
    picture = np.asarray(overlay(image, masks, boxes, ["cat 0.9", "dog 0.8"], points, torch.tensor([1, 0])))
    assert picture.shape == (40, 50, 3)
    assert (picture[25, 10] == 100).all()  # outside everything
    inner0, inner1 = picture[10, 10], picture[27, 37]
    assert not (inner0 == 100).all() and not (inner1 == 100).all() and not (inner0 == inner1).all()
    assert picture[5, 45, 1] > 150 and picture[35, 5, 0] > 150  # foreground point green, background red
