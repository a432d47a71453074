import json
import math

import pytest
import torch
import torch.distributed as dist
from two_processes import in_two_processes, randn

from freelabel import losses
from freelabel.backbones import build_backbone
from freelabel.cli import main
from freelabel.data.loader import Batch
from freelabel.data.masking import block_masks
from freelabel.data.views import ViewConfig
from freelabel.methods.dinov2 import DINOv2

TINY = [
    "method_args.out_dim=32",
    "method_args.hidden_dim=32",
    "method_args.bottleneck_dim=16",
    "method_args.local_crops=2",
    "method_args.local_size=12",
    "backbone.args.depth=2",
    "backbone.args.embed_dim=32",
    "backbone.args.num_heads=2",
    "log_every=1",
]


def test_ibot_patch_loss_matches_a_direct_computation():
    b, k = 3, 5
    masks = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)  # image 1 hides nothing
    m = int(masks.sum())
    student, teacher = randn(m, k), torch.softmax(randn(m, k, seed=1), -1)
    expected, row = 0.0, 0
    for i in range(b):
        hidden = int(masks[i].sum())
        for _ in range(hidden):
            log_q = torch.log_softmax(student[row].double() / 0.1, -1)
            expected += -float((teacher[row].double() * log_q).sum()) / hidden / b
            row += 1
    assert losses.ibot_patch_loss(student, teacher, masks, 0.1).item() == pytest.approx(expected, rel=1e-5)


def koleo_by_hand(x):
    z = [v / v.norm() for v in x.double()]
    total = 0.0
    for i, a in enumerate(z):
        total += -math.log(min(float((a - c).norm()) for j, c in enumerate(z) if j != i) + 1e-8)
    return total / len(z)


def test_koleo_matches_a_direct_computation_and_pushes_neighbours_apart():
    x = randn(7, 3)
    assert losses.koleo(x).item() == pytest.approx(koleo_by_hand(x), rel=1e-5)
    assert losses.koleo(5 * x).item() == pytest.approx(koleo_by_hand(x), rel=1e-5)  # on the sphere
    near = torch.cat([x, x[:1] + 1e-3])  # a near-twin of row 0 makes its rows' distances tiny
    assert losses.koleo(near) > losses.koleo(x) + 1


def test_sinkhorn_knopp_spreads_the_batch_over_the_prototypes():
    logits = randn(12, 4) + torch.tensor([3.0, 0, 0, 0])  # a teacher that prefers prototype 0
    assert torch.softmax(logits / 0.5, -1).sum(0)[0] > 11  # a softmax gives it nearly every image
    q = losses.sinkhorn_knopp(logits, temp=0.5, iterations=3)
    torch.testing.assert_close(q.sum(1), torch.ones(12))  # each row a distribution
    torch.testing.assert_close(q.sum(0), torch.full((4,), 3.0), atol=0.25, rtol=0)  # columns near N / K = 3
    converged = losses.sinkhorn_knopp(logits, temp=0.5, iterations=200)
    torch.testing.assert_close(converged.sum(0), torch.full((4,), 3.0), atol=1e-4, rtol=0)
    r = q.log() - logits / 0.5  # only rescaled rows and columns of exp(logits / temp): a row + a column term
    torch.testing.assert_close(
        r - r.mean(0) - r.mean(1, keepdim=True) + r.mean(), torch.zeros(12, 4), atol=1e-4, rtol=0
    )


def test_gram_loss_is_zero_for_the_same_features_and_leaves_the_teacher_alone():
    s, t = randn(2, 5, 4).requires_grad_(), randn(2, 5, 4, seed=1).requires_grad_()
    a, b = (torch.nn.functional.normalize(v.detach().double(), dim=-1) for v in (s, t))
    assert losses.gram_loss(s, 3 * s.detach()).item() == pytest.approx(0.0, abs=1e-7)  # cosine Gram: scale-free
    loss = losses.gram_loss(s, t)
    direct = sum(float(((a[i] @ a[i].T - b[i] @ b[i].T) ** 2).sum()) for i in range(2)) / (2 * 5 * 5)
    assert loss.item() == pytest.approx(direct, rel=1e-5) and loss.item() > 0
    loss.backward()
    assert t.grad is None and s.grad.abs().sum() > 0


def test_block_masks_hide_a_ratio_in_range_in_blocks_on_the_asked_share_of_images():
    g = torch.Generator().manual_seed(0)
    masks = block_masks(200, (8, 8), ratio=(0.1, 0.5), probability=0.5, generator=g)
    assert masks.shape == (200, 64) and masks.dtype == torch.bool
    hidden = masks.sum(1)
    assert (hidden > 0).sum() == 100
    ratios = hidden[hidden > 0] / 64
    assert ratios.min() >= 0.1 and ratios.max() <= 0.5 and ratios.std() > 0.08  # spread over the range
    grid = masks.view(200, 8, 8).float()
    pad = torch.nn.functional.pad(grid, (1, 1, 1, 1))
    neighbours = pad[:, :-2, 1:-1] + pad[:, 2:, 1:-1] + pad[:, 1:-1, :-2] + pad[:, 1:-1, 2:]
    assert (neighbours[grid.bool()] > 0).float().mean() > 0.95  # blocks, not scattered patches
    again = block_masks(200, (8, 8), generator=torch.Generator().manual_seed(0))
    assert torch.equal(masks, again)
    tall = block_masks(10, (4, 6), ratio=(0.25, 0.25), probability=1.0, generator=g)
    assert tall.sum(1).tolist() == [6] * 10


def test_a_vit_replaces_hidden_patches_with_the_mask_token():
    vit = build_backbone("vit_tiny", 1, 16, patch_size=4, depth=2, embed_dim=32, num_heads=2).eval()
    x = randn(2, 1, 16, 16)
    pooled, tokens = vit.forward_pooled_tokens(x)
    torch.testing.assert_close(pooled, vit(x))
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :4] = True  # the top row of patches
    token = torch.randn(32, requires_grad=True)
    y = x.clone()
    y[:, :, :4] = 5.0  # changes only hidden pixels
    p, a = vit.forward_masked(x, mask, token)
    assert a.shape == (2, 16, 32) and p.shape == (2, 32)
    torch.testing.assert_close(a, vit.forward_masked(y, mask, token)[1])
    assert not torch.allclose(a, tokens)
    a.sum().backward()
    assert token.grad.abs().sum() > 0


def _tiny_dinov2(**kw) -> DINOv2:
    vit = build_backbone("vit_tiny", 1, 16, patch_size=4, depth=2, embed_dim=32, num_heads=2)
    return DINOv2(
        vit, ViewConfig(size=16), out_dim=32, hidden_dim=32, bottleneck_dim=16, ibot_out_dim=24, local_crops=0, **kw
    )


def test_the_gram_teacher_is_the_ema_teacher_frozen_when_gram_anchoring_starts():
    method = _tiny_dinov2(gram_weight=1.0, gram_start=0.5, separate_ibot_head=True)
    assert set(method.teacher) == {"backbone", "head", "ibot_head"}
    method.train()
    assert method.backbone.training and not method.teacher.training and not method.gram_teacher.training
    initial = method.teacher["backbone"].model.cls_token.clone()  # what frozen_copy copied
    with torch.no_grad():
        for p in method.teacher["backbone"].parameters():
            p.add_(1.0)
    method.on_step(0.25)
    assert not method.gram_on and not method.gram_ready
    assert torch.equal(method.gram_teacher.model.cls_token, initial)
    method.on_step(0.5)
    assert method.gram_on and method.gram_ready
    snapshot = {k: v.clone() for k, v in method.teacher["backbone"].state_dict().items()}
    with torch.no_grad():
        for p in method.teacher["backbone"].parameters():
            p.add_(1.0)
    method.on_step(0.75)  # taken once: later teacher updates leave it
    for k, v in method.gram_teacher.state_dict().items():
        torch.testing.assert_close(v, snapshot[k])
    views = [torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)]
    batch = Batch(views[0], views=views, masks=method.masks(4, torch.Generator().manual_seed(0)))
    out = method.training_step(batch)
    assert out["gram"] > 0 and torch.isfinite(out["loss"])
    assert out["loss"].item() == pytest.approx((out["dino"] + out["ibot"] + 0.1 * out["koleo"] + out["gram"]).item())


def test_dinov2_refuses_a_convnet_and_an_unknown_centering():
    from freelabel.backbones import BackboneError
    from freelabel.config import ConfigError

    with pytest.raises(BackboneError, match="ViT"):
        DINOv2(build_backbone("convnet", 1, 16, widths=(8, 16)), ViewConfig(size=16))
    with pytest.raises(ConfigError, match="center or sinkhorn"):
        _tiny_dinov2(centering="swav")


# ------------------------------------------------------------------------ 2 processes == 1 process
def _worker(rank: int, world: int, logits: torch.Tensor, x: torch.Tensor) -> tuple:
    b = len(logits) // world
    q = losses.sinkhorn_knopp(logits[rank * b : (rank + 1) * b], temp=0.5)
    part = x[rank * (len(x) // world) : (rank + 1) * (len(x) // world)].clone().requires_grad_()
    loss = losses.koleo(part)
    (loss / world).backward()
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    return q, (mean / world).item(), part.grad


@pytest.mark.slow
def test_two_processes_give_the_sinkhorn_targets_and_koleo_of_one():
    logits, x = 3 * randn(12, 5), randn(8, 4, seed=3)
    out = in_two_processes(_worker, logits, x)
    torch.testing.assert_close(torch.cat([out[0][0], out[1][0]]), losses.sinkhorn_knopp(logits, temp=0.5))
    whole = x.clone().requires_grad_()
    loss = losses.koleo(whole)
    loss.backward()
    assert out[0][1] == pytest.approx(loss.item(), rel=1e-5)
    torch.testing.assert_close(torch.cat([out[0][2], out[1][2]]), whole.grad, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------ the command line
def _scalars(run, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


@pytest.mark.slow
def test_tiny_dinov2_runs_with_sinkhorn_then_gram_anchoring_switches_on_mid_run(tmp_path):
    sets = lambda extra: [a for s in TINY + extra for a in ("--set", s)]  # noqa: E731
    first = tmp_path / "sinkhorn"
    args = ["pretrain", "dinov2", "--backbone", "vit_tiny", "--steps", "4", "--batch-size", "8"]
    assert main([*args, "--out", str(first), *sets(["method_args.centering=sinkhorn"])]) == 0
    metrics = json.loads((first / "metrics.json").read_text())["pretrain"]
    assert metrics["steps"] == 4 and math.isfinite(metrics["final_loss"])
    assert all(v > 0 for v in _scalars(first, "train/ibot").values())

    gram = tmp_path / "gram"
    extra = ["method_args.gram_weight=2.0", "method_args.gram_start=0.5", "method_args.separate_ibot_head=true"]
    assert main([*args, "--out", str(gram), *sets(extra)]) == 0
    values = _scalars(gram, "train/gram")
    assert values[1] == values[2] == 0 and values[3] > 0 and values[4] > 0  # on from the 3rd step (progress 0.5)
    from safetensors.torch import load_file

    state = load_file(str(gram / "checkpoints" / "step-00000004" / "model.safetensors"))
    assert state["gram_ready"].item()
    assert not torch.equal(state["gram_teacher.model.cls_token"], state["teacher.backbone.model.cls_token"])

    anchored = tmp_path / "anchored"  # a Gram teacher read from an earlier run's checkpoint
    extra = ["method_args.gram_weight=1.0", f"method_args.gram_checkpoint={first}"]
    assert main([*args, "--out", str(anchored), *sets(extra)]) == 0
    earlier = load_file(str(first / "checkpoints" / "step-00000004" / "model.safetensors"))
    state = load_file(str(anchored / "checkpoints" / "step-00000004" / "model.safetensors"))
    torch.testing.assert_close(state["gram_teacher.model.cls_token"], earlier["teacher.backbone.model.cls_token"])
    assert all(v > 0 for v in _scalars(anchored, "train/gram").values())


@pytest.mark.slow
def test_a_resumed_dinov2_run_draws_the_same_ibot_masks_and_losses(fmnist_folder, tmp_path):
    """The iBOT masks come from the loader's seeded stream, not the global one (which a data loader, made
    anew on resume, draws from): a run resumed at step 2 repeats steps 3 and 4."""
    import shutil

    full, part = tmp_path / "full", tmp_path / "part"
    args = [
        "pretrain",
        "dinov2",
        "--backbone",
        "vit_tiny",
        "--steps",
        "4",
        "--batch-size",
        "8",
        "--data",
        str(fmnist_folder),
        "--recipe",
        "dinov2-fashion-mnist",
        *[a for s in TINY + ["checkpoint_every=2"] for a in ("--set", s)],
    ]
    assert main([*args, "--out", str(full)]) == 0
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step-00000004")
    (part / "backbone.safetensors").unlink()
    shutil.rmtree(part / "tb")
    assert main(["pretrain", "--resume", str(part)]) == 0
    for tag in ("train/ibot", "train/loss"):
        resumed, whole = _scalars(part, tag), _scalars(full, tag)
        assert sorted(resumed) == [3, 4] and resumed[3] == pytest.approx(whole[3], abs=1e-6)
        assert resumed[4] == pytest.approx(whole[4], abs=1e-6)
