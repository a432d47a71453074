"""MAE and I-JEPA: their masks, the visible-only encoder, their losses, the EMA target, end-to-end runs."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from freelabel.backbones import BackboneError, build_backbone
from freelabel.cli import main
from freelabel.data.loader import Batch, batches, global_masks
from freelabel.data.masking import BlockMasks, MultiBlockMasks, RandomMasks, places
from freelabel.data.registry import open_dataset
from freelabel.data.sources import TensorImages
from freelabel.data.views import ViewConfig
from freelabel.losses import latent_prediction_loss, masked_patch_loss
from freelabel.methods.ijepa import IJEPA
from freelabel.methods.mae import MAE, patchify, unpatchify

VIEWS = ViewConfig(size=28, mean=(0.286,), std=(0.353,))
TINY_VIT = {"patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2, "global_pool": "avg", "fc_norm": False}


def tiny_vit(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone("vit_tiny", 1, 28, **{**TINY_VIT, **kw})


@pytest.mark.parametrize("grid, ratio, keep", [((7, 7), 0.75, 12), ((14, 14), 0.75, 49), ((16, 16), 0.5, 128)])
def test_random_masks_hide_the_configured_ratio(grid, ratio, keep):
    masks = RandomMasks(grid, ratio)
    mask = masks(64, torch.Generator().manual_seed(0))["mask"]
    n = math.prod(grid)
    assert mask.shape == (64, n) and mask.dtype == torch.bool
    assert (mask.sum(1) == n - keep).all() and masks.num_keep == keep == int(n * (1 - ratio))
    assert len({tuple(r.tolist()) for r in mask}) == 64  # each sample its own mask
    assert mask.float().mean(0).std() < 0.1  # every place about equally often hidden
    assert torch.equal(mask, masks(64, torch.Generator().manual_seed(0))["mask"])  # the generator fixes them


def rectangle(idx: torch.Tensor, cols: int) -> tuple[int, int] | None:
    """``(h, w)`` when grid places ``idx`` fill a rectangle exactly, else None."""
    r, c = idx // cols, idx % cols
    h, w = int(r.max() - r.min() + 1), int(c.max() - c.min() + 1)
    return (h, w) if h * w == len(idx) == len(set(idx.tolist())) else None


def within(h: int, w: int, n: int, scale: tuple[float, float], aspect: tuple[float, float]) -> bool:
    """A block of ``h x w`` is one of area ``scale * n`` and ratio ``h / w`` in ``aspect`` up to rounding each side."""
    lo, hi = scale[0] * n - 0.5 * (h + w) - 0.25, scale[1] * n + 0.5 * (h + w) + 0.25
    return lo <= h * w <= hi and (h - 0.5) / (w + 0.5) <= aspect[1] and (h + 0.5) / (w - 0.5) >= aspect[0]


@pytest.mark.parametrize("seed", range(5))
def test_multiblock_geometry_matches_the_configuration(seed):
    grid, b = (16, 16), 32  # the paper's grid: 224 px in patches of 14
    masks = MultiBlockMasks(grid)
    out = masks(b, torch.Generator().manual_seed(seed))
    hidden, targets = out["context"], out["targets"]
    assert targets.shape[:2] == (b, 4) and hidden.shape == (b, 256)
    shapes = {rectangle(block, 16) for sample in targets for block in sample}
    assert len(shapes) == 1 and None not in shapes  # every target a full rectangle, one size per batch
    (h, w), n = shapes.pop(), 256
    assert within(h, w, n, (0.15, 0.2), (0.75, 1.5)), (h, w)
    visible = ~hidden
    assert (visible.sum(1) == visible[0].sum()).all() and visible[0].sum() >= masks.min_keep  # equal counts
    in_target = torch.zeros(b, n, dtype=torch.bool).scatter_(1, targets.flatten(1), True)
    assert not (visible & in_target).any()  # targets are cut out of the context
    for row in places(visible):  # each context lies in one block smaller than the grid (at most 15 x 15)
        assert row.div(16, rounding_mode="floor").unique().numel() <= 15 and (row % 16).unique().numel() <= 15


def test_multiblock_masks_on_the_cpu_recipes_grid():
    masks = MultiBlockMasks((7, 7))
    for seed in range(20):
        out = masks(64, torch.Generator().manual_seed(seed))
        assert out["targets"].shape[:2] == (64, 4) and (~out["context"]).sum(1).min() >= masks.min_keep


def test_loader_makes_the_masks_per_batch_reproducibly(fmnist):
    masks = RandomMasks((7, 7))
    small = TensorImages(fmnist.images[:64], fmnist.labels[:64], fmnist.classes)
    whole = list(batches(small, 16, seed=3, epoch=1, masks=masks))
    resumed = list(batches(small, 16, seed=3, epoch=1, start=2, masks=masks))
    assert all(b.masks["mask"].shape == (16, 49) for b in whole)
    assert torch.equal(resumed[0].masks["mask"], whole[2].masks["mask"])  # a resumed run draws the same masks
    assert not torch.equal(whole[0].masks["mask"], whole[1].masks["mask"])
    assert list(batches(small, 16, seed=3, epoch=1))[0].masks == {}  # no maker, no masks


@pytest.mark.slow  # a DataLoader worker process
def test_masks_are_made_in_the_dataloaders_collator(fmnist_folder):
    masks = MultiBlockMasks((7, 7))
    folder = open_dataset(str(fmnist_folder), "train", size=28)  # decoded by a DataLoader
    resumed = list(batches(folder, 8, seed=3, epoch=0, start=1, masks=masks))[0].masks
    for workers in (0, 1):
        got = list(batches(folder, 8, seed=3, epoch=0, workers=workers, masks=masks))
        assert len(got[1].images) == 8 and got[1].masks["targets"].shape[:2] == (8, 4)
        assert all(torch.equal(got[1].masks[k], resumed[k]) for k in ("context", "targets"))


def test_vit_encoder_runs_on_the_visible_tokens_only():
    vit = tiny_vit().eval()
    x = torch.randn(4, 1, 28, 28)
    mask = RandomMasks((7, 7))(4, torch.Generator().manual_seed(0))["mask"]
    seen = []
    vit.model.blocks[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape))
    out = vit.forward_visible(x, mask)
    assert seen[-1] == (4, 1 + 12, 32) and out.shape == (4, 12, 32)  # class token + 12 visible patches
    hidden_pixels = F.interpolate(mask.view(4, 1, 7, 7).float(), scale_factor=4).bool()
    noisy = torch.where(hidden_pixels, torch.randn_like(x) * 5, x)  # change every hidden pixel
    torch.testing.assert_close(vit.forward_visible(noisy, mask), out)
    visible_changed = torch.where(hidden_pixels, x, x + 1)
    assert not torch.allclose(vit.forward_visible(visible_changed, mask), out)
    full = vit.forward_tokens(x)  # the visible tokens are the patches in grid order, at their own positions
    torch.testing.assert_close(vit.forward_visible(x, torch.zeros(4, 49, dtype=torch.bool)), full)
    uneven = torch.zeros(4, 49, dtype=torch.bool)
    uneven[0, :3] = True
    with pytest.raises(BackboneError, match="same number"):
        vit.forward_visible(x, uneven)


def test_patchify_and_the_normalised_pixel_loss_against_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 8, 12, generator=g)
    patches = patchify(x, 4)
    assert patches.shape == (3, 6, 32)
    torch.testing.assert_close(patches[1, 4], x[1, :, 4:8, 4:8].permute(1, 2, 0).flatten())  # row 1, col 1
    torch.testing.assert_close(unpatchify(patches, 4, 2, (2, 3)), x)
    pred, mask = torch.randn(3, 6, 32, generator=g), torch.rand(3, 6, generator=g) < 0.5
    terms = []
    for b in range(3):
        for n in range(6):
            if mask[b, n]:
                t = patches[b, n]
                t = (t - t.mean()) / torch.sqrt(t.var() + 1e-6)
                terms.append(((pred[b, n] - t) ** 2).mean())
    torch.testing.assert_close(masked_patch_loss(pred, patches, mask), torch.stack(terms).mean())
    raw = torch.stack([((pred[b, n] - patches[b, n]) ** 2).mean() for b, n in mask.nonzero().tolist()]).mean()
    torch.testing.assert_close(masked_patch_loss(pred, patches, mask, norm_pix=False), raw)


def test_mae_step_uses_the_hidden_patches_only():
    mae = MAE(tiny_vit(), VIEWS, decoder_dim=16, decoder_depth=1, decoder_heads=2)
    x = torch.randn(4, 1, 28, 28)
    mask = mae.masks(4, torch.Generator().manual_seed(0))["mask"]
    loss = mae.training_step(Batch(x, views=[x], masks={"mask": mask}))["loss"]
    pred = mae.reconstruct(x, mask)
    assert pred.shape == (4, 37, 16)
    full = torch.zeros(4, 49, 16)
    full[mask] = pred.flatten(0, 1)
    torch.testing.assert_close(loss, masked_patch_loss(full, patchify(x, 4), mask))
    loss.backward()
    assert mae.decoder.mask_token.grad.abs().sum() > 0 and mae.backbone.model.patch_embed.proj.weight.grad is not None


def test_ijepa_target_gets_no_gradient_and_follows_the_ema():
    torch.manual_seed(0)
    ijepa = IJEPA(tiny_vit(class_token=False), VIEWS, predictor_dim=16, predictor_depth=1, predictor_heads=2)
    assert not any(p.requires_grad for p in ijepa.target.parameters())
    x = torch.randn(8, 1, 28, 28)
    masks = ijepa.masks(8, torch.Generator().manual_seed(0))
    out = ijepa.training_step(Batch(x, views=[x], masks=masks))
    out["loss"].backward()
    assert all(p.grad is None for p in ijepa.target.parameters())
    assert ijepa.backbone.model.patch_embed.proj.weight.grad.abs().sum() > 0
    assert ijepa.predictor.mask_token.grad.abs().sum() > 0
    # The loss is the predictor's output at the targets against the layer-normed target tokens there.
    at = masks["targets"]
    with torch.no_grad():
        h = ijepa.target["backbone"].forward_tokens(x)
        z = ijepa.backbone.forward_visible(x, masks["context"])
        per_block = [ijepa.predictor(z, places(~masks["context"]), at[:, i]) for i in range(4)]
        want = torch.stack(
            [
                F.smooth_l1_loss(p, F.layer_norm(h[torch.arange(8)[:, None], at[:, i]], (32,)))
                for i, p in enumerate(per_block)
            ]
        ).mean()
    torch.testing.assert_close(out["loss"].detach(), want, rtol=1e-4, atol=1e-5)
    before = [p.clone() for p in ijepa.target.parameters()]
    with torch.no_grad():
        for p in ijepa.backbone.parameters():
            p.add_(1.0)
    ijepa.on_step(0.5)
    assert ijepa.target.momentum == pytest.approx(0.998)  # 0.996 -> 1 linearly
    ijepa.after_step(0.5)
    for b, a in zip(before, ijepa.target.parameters()):
        torch.testing.assert_close(a, b + 0.002, rtol=0, atol=1e-5)


def test_latent_prediction_loss_kinds():
    p, t = torch.randn(2, 5, 8), torch.randn(2, 5, 8) * 3 + 1
    tn = (t - t.mean(-1, keepdim=True)) / torch.sqrt(t.var(-1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(latent_prediction_loss(p, t, "l2"), ((p - tn) ** 2).mean())
    d = (p - tn).abs()
    torch.testing.assert_close(latent_prediction_loss(p, t), torch.where(d < 1, 0.5 * d**2, d - 0.5).mean())


def test_masked_methods_refuse_a_cnn():
    from freelabel.config import ConfigError

    with pytest.raises(ConfigError, match="needs a ViT backbone"):
        MAE(build_backbone("convnet", 1, 28), VIEWS)


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, sets",
    [
        ("mae", ["method_args.decoder_dim=16", "method_args.decoder_depth=1", "method_args.decoder_heads=2"]),
        ("ijepa", ["method_args.predictor_dim=16", "method_args.predictor_depth=1", "method_args.predictor_heads=2"]),
    ],
)
def test_tiny_end_to_end(method, sets, tmp_path):
    run = tmp_path / method
    vit = [f"backbone.args.{k}={v}" for k, v in TINY_VIT.items() if k != "patch_size"]
    args = [a for s in sets + vit + ["log_every=1"] for a in ("--set", s)]
    assert (
        main(
            [
                "pretrain",
                method,
                "--data",
                "fashion-mnist",
                "--steps",
                "2",
                "--batch-size",
                "8",
                "--out",
                str(run),
                *args,
            ]
        )
        == 0
    )
    metrics = json.loads((run / "metrics.json").read_text())["pretrain"]
    assert metrics["steps"] == 2 and math.isfinite(metrics["final_loss"])
    if method == "mae":
        with Image.open(run / "reconstruction.png") as im:  # 3 rows of the 8 images of 28 px, 1 px apart
            assert im.size == (8 * 29 + 1, 3 * 29 + 1)


@pytest.mark.parametrize("maker", [RandomMasks((4, 4)), BlockMasks((4, 4), views=2), MultiBlockMasks((6, 6))], ids=type)
def test_a_batch_split_over_processes_gets_the_masks_of_the_whole(maker):
    whole = global_masks(maker, 8, 0, 8, seed=1, epoch=0, step=2)
    parts = [global_masks(maker, 4, first, 8, seed=1, epoch=0, step=2) for first in (0, 4)]
    for k, m in whole.items():
        per_sample = m.unflatten(0, (-1, 8))  # BlockMasks stacks its views: [views * B, N]
        got = torch.cat([p[k].unflatten(0, (-1, 4)) for p in parts], 1)
        assert torch.equal(got, per_sample), k
