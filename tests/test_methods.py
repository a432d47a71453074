import json

import pytest
import torch

from freelabel.cli import main
from freelabel.ema import MomentumTeacher, ema_update, frozen_copy
from freelabel.methods import METHODS
from freelabel.schedules import cosine_schedule, lr_at

TINY_ARGS = {
    "simclr": ["method_args.hidden_dim=32"],
    "mocov2": ["method_args.hidden_dim=32", "method_args.queue_size=96", "method_args.bn_splits=2"],
    "mocov3": ["method_args.hidden_dim=32", "method_args.proj_dim=16"],
    "byol": ["method_args.hidden_dim=32", "method_args.proj_dim=16"],
    "dino": [
        "method_args.hidden_dim=32",
        "method_args.out_dim=64",
        "method_args.bottleneck_dim=16",
        "method_args.local_crops=2",
        "method_args.local_size=14",
    ],
    "barlowtwins": ["method_args.hidden_dim=32", "method_args.proj_dim=32"],
    "vicreg": ["method_args.hidden_dim=32", "method_args.proj_dim=32"],
    "rotation": ["method_args.hidden_dim=32", "method_args.per_image=2"],
    "jigsaw": ["method_args.permutations=10", "method_args.tile_dim=8", "method_args.hidden_dim=32"],
}


def test_every_registered_method_has_a_tiny_run():
    # colorization's needs colour data (test_pretext.py); clip's and siglip's captions (test_clip_cli.py);
    # dinov2's, mae's and ijepa's a ViT (test_dinov2.py, test_masked.py)
    assert set(TINY_ARGS) | {"colorization", "clip", "siglip", "dinov2", "mae", "ijepa"} == set(METHODS)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(TINY_ARGS))
def test_tiny_end_to_end(method, tmp_path):
    run = tmp_path / method
    sets = [a for s in TINY_ARGS[method] + ["backbone.args.widths=[16,32]", "log_every=1"] for a in ("--set", s)]
    assert main(["pretrain", method, "--steps", "4", "--batch-size", "16", "--out", str(run), *sets]) == 0
    metrics = json.loads((run / "metrics.json").read_text())["pretrain"]
    assert metrics["steps"] == 4 and metrics["method"] == method
    assert torch.isfinite(torch.tensor(metrics["final_loss"]))


def test_schedules_at_their_end_points():
    assert cosine_schedule(0.0, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_schedule(1.0, 0.996, 1.0) == pytest.approx(1.0)
    assert cosine_schedule(0.5, 0.04, 0.4) == pytest.approx(0.22)
    assert lr_at(0.0, 0.1) == 0.0 and lr_at(0.1, 0.1) == pytest.approx(1.0)
    assert lr_at(1.0, 0.1) == pytest.approx(0.0) and lr_at(1.0, 0.1, min_lr=0.01) == pytest.approx(0.01)


def test_ema_update_moves_the_target_by_one_minus_momentum():
    online = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    target = frozen_copy(online)
    assert not any(p.requires_grad for p in target.parameters())
    before = target[0].weight.clone()
    with torch.no_grad():
        online[0].weight.add_(1.0)
        online[1].running_mean.fill_(5.0)
    ema_update(target, online, 0.9)
    torch.testing.assert_close(target[0].weight, before + 0.1)
    assert target[1].running_mean.tolist() == [5.0, 5.0]
    ema_update(target, online, 1.0)  # momentum 1: frozen
    torch.testing.assert_close(target[0].weight, before + 0.1)
    ema_update(target, online, 0.0)  # momentum 0: a copy
    torch.testing.assert_close(target[0].weight, online[0].weight)


def test_a_momentum_teacher_follows_its_student_on_its_schedule_and_saves_only_itself():
    student = {
        "backbone": torch.nn.Linear(3, 2),
        "head": torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)),
    }
    teacher = MomentumTeacher(student, momentum=0.9)
    method = torch.nn.ModuleDict({**student, "teacher": teacher})
    assert sorted(teacher.state_dict()) == sorted(f"{n}.{k}" for n, m in student.items() for k in m.state_dict())
    assert all(k.startswith(("backbone.", "head.", "teacher.backbone.", "teacher.head.")) for k in method.state_dict())
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(5, 3)
    torch.testing.assert_close(teacher(x), student["head"](student["backbone"](x)))  # a copy, run in order
    before = teacher["backbone"].weight.clone()
    with torch.no_grad():
        student["backbone"].weight.add_(1.0)
    teacher.set_progress(0.0)
    teacher.update()
    torch.testing.assert_close(teacher["backbone"].weight, before + 0.1)
    teacher.set_progress(0.5)
    assert teacher.momentum == pytest.approx(0.95)  # half-way along the cosine to 1
    teacher.set_progress(1.0)
    teacher.update()  # momentum 1: frozen
    torch.testing.assert_close(teacher["backbone"].weight, before + 0.1)
    linear = MomentumTeacher(student, 0.996, schedule="linear")
    linear.set_progress(0.5)
    assert linear.momentum == pytest.approx(0.998)
    fixed = MomentumTeacher(student, 0.99, schedule="constant")
    fixed.set_progress(0.5)
    assert fixed.momentum == 0.99


def test_dino_freezes_its_last_layer_early_and_warms_the_teacher_temperature():
    from freelabel.backbones import build_backbone
    from freelabel.data.views import ViewConfig
    from freelabel.methods.dino import DINO

    dino = DINO(
        build_backbone("convnet", 1, 28, widths=(8, 16)),
        ViewConfig(size=28),
        out_dim=32,
        hidden_dim=16,
        bottleneck_dim=8,
        local_crops=2,
        local_size=12,
        teacher_temp=0.07,
        warmup_teacher_temp=0.04,
        teacher_temp_warmup=0.5,
        freeze_last_layer=0.1,
    )
    assert [v.size for v in dino.views] == [28, 28, 12, 12]
    dino.on_step(0.0)
    assert dino.teacher_temp == pytest.approx(0.04)
    dino.on_step(0.25)
    assert dino.teacher_temp == pytest.approx(0.055)
    dino.on_step(0.9)
    assert dino.teacher_temp == pytest.approx(0.07)
    for p in dino.head.parameters():
        p.grad = torch.ones_like(p)
    dino.after_backward(0.05)
    assert all(p.grad is None for p in dino.head.last_layer.parameters())
    assert all(p.grad is not None for p in dino.head.mlp.parameters())


def test_mocov3_builds_the_papers_vit_heads_by_default_and_its_resnet_heads_on_request():
    from freelabel.backbones import build_backbone
    from freelabel.data.views import ViewConfig
    from freelabel.methods.moco import MoCoV3

    def linears(net: torch.nn.Module) -> int:
        return sum(isinstance(m, torch.nn.Linear) for m in net.modules())

    backbone = build_backbone("convnet", 1, 28, widths=(8, 16))
    vit = MoCoV3(backbone, ViewConfig(size=28), hidden_dim=32, proj_dim=16)
    assert linears(vit.projector) == 3 and isinstance(vit.predictor[-1], torch.nn.BatchNorm1d)
    resnet = MoCoV3(backbone, ViewConfig(size=28), hidden_dim=32, proj_dim=16, proj_layers=2, predictor_bn=False)
    assert linears(resnet.projector) == 2 and isinstance(resnet.projector[-1], torch.nn.BatchNorm1d)
    assert isinstance(resnet.predictor[-1], torch.nn.Linear) and resnet.predictor[-1].bias is not None
    q = resnet.predictor(resnet.projector(backbone(torch.randn(4, 1, 28, 28))))
    assert q.shape == (4, 16)
