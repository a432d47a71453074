"""The training-health monitor: effective rank and spread of the embeddings (no labels needed), the
method's own signs (a DINO teacher's entropy and centre drift), and one warning line when a run
collapses, naming the method's advice."""

import json
import math

import torch
import torch.nn.functional as F

from freelabel.cli import main
from freelabel.losses import distillation_signs
from freelabel.methods import REGISTRY
from freelabel.train import online_eval
from freelabel.train.health import collapsed, embedding_health

ALIGN = '''
import torch

from freelabel.methods.base import Method


class Align(Method):
    """Collapses on purpose: every image's embedding is pulled to zero."""

    collapse_advice = "toy advice: stop pulling every embedding to one point"

    def __init__(self, backbone, views):
        super().__init__()
        self.backbone, self.views = backbone, [views]

    def training_step(self, batch):
        z = self.backbone(batch.views[0])
        return {"loss": z.abs().mean()}
'''
RECIPE = """
method: align
backbone: {name: convnet, args: {widths: [8, 16]}}
views: {size: 28, scale: [0.5, 1.0], mean: [0.5], std: [0.5]}
optim: {name: adamw, lr: 3.0, batch_size: 8, warmup: 0.0}  # 0.1 at batch 8
data: {workers: 0}
"""
TINY = ["--set", "backbone.args.widths=[8,16]", "--set", "data.workers=0", "--set", "log_every=1"]


def test_rank_and_spread_tell_spread_embeddings_from_collapsed_ones():
    g = torch.Generator().manual_seed(0)
    spread = embedding_health(torch.randn(1000, 64, generator=g))
    assert spread["effective_rank"] > 50 and 0.9 < spread["spread"] < 1.1 and not collapsed(spread)
    one_point = embedding_health(torch.ones(1000, 64) + 1e-6 * torch.randn(1000, 64, generator=g))
    assert one_point["effective_rank"] < 1.5 and one_point["spread"] < 0.01 and collapsed(one_point)
    two_directions = embedding_health(torch.randn(1000, 2, generator=g) @ torch.randn(2, 64, generator=g))
    assert 1.5 < two_directions["effective_rank"] < 2.5 and two_directions["rank_of"] == 64


def test_a_teacher_that_sends_every_image_to_one_prototype_is_a_collapse_and_a_uniform_one_is_not():
    k = 64
    one_prototype = F.one_hot(torch.zeros(32, dtype=torch.long), k).float() * (1 - 1e-6) + 1e-6 / k
    loss = -(one_prototype * one_prototype.log()).sum(-1).mean()  # a student that predicts its teacher exactly
    signs = distillation_signs(loss, one_prototype)
    assert abs(signs["student_kl"]) < 1e-4 and signs["prototype_spread"] < 0.01
    assert collapsed({"effective_rank": 9.0, "spread": 0.5, **signs})
    g = torch.Generator().manual_seed(0)
    for teacher in (torch.full((32, k), 1 / k), F.softmax(torch.randn(32, k, generator=g) * 3, -1)):  # early; sharp
        loss = -(teacher * F.log_softmax(torch.zeros(32, k), -1)).sum(-1).mean()  # a uniform student
        signs = distillation_signs(loss, teacher)
        assert signs["prototype_spread"] > 0.5 and not collapsed({"effective_rank": 9.0, "spread": 0.5, **signs})
    assert signs["student_kl"] > 0.1


def test_a_collapsing_run_is_warned_once_with_its_methods_advice(tmp_path, monkeypatch, fmnist_few):
    (tmp_path / "collapse").mkdir()
    (tmp_path / "collapse" / "__init__.py").write_text("")
    (tmp_path / "collapse" / "align.py").write_text(ALIGN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(REGISTRY, "align", ("collapse.align:Align", "collapses on purpose"))
    (tmp_path / "align.yaml").write_text(RECIPE)
    argv = ["pretrain", "align", "--data", str(fmnist_few), "--recipe", str(tmp_path / "align.yaml"), "--steps", "30"]
    with monkeypatch.context() as free:  # checks as costly as they like: one at each fifth
        free.setattr(online_eval, "SHARE", math.inf)
        assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    health = json.loads((tmp_path / "run" / "metrics.json").read_text())["pretrain"]["health"]
    assert len(health) == 5 and [h["step"] for h in health] == [6, 12, 18, 24, 30]  # each fifth, no --eval-every
    assert collapsed(health[-1]) and health[-1]["effective_rank"] < health[0]["effective_rank"]
    log = (tmp_path / "run" / "log.txt").read_text()
    assert log.count("the run is collapsing") == 1 and "toy advice: stop pulling every embedding" in log

    monkeypatch.setattr(online_eval, "SHARE", 0.0)  # checks that would cost too much: the last one only
    assert main([*argv, "--out", str(tmp_path / "seconds")]) == 0
    health = json.loads((tmp_path / "seconds" / "metrics.json").read_text())["pretrain"]["health"]
    assert [h["step"] for h in health] == [30] and collapsed(health[-1])
    assert "the run is collapsing" in (tmp_path / "seconds" / "log.txt").read_text()


def test_a_dino_run_records_its_teachers_entropy_and_centre_drift(tmp_path, fmnist_few):
    run = tmp_path / "run"
    dino = [
        "--set",
        "method_args.hidden_dim=16",
        "--set",
        "method_args.out_dim=32",
        "--set",
        "method_args.bottleneck_dim=8",
    ]
    argv = ["pretrain", "dino", "--data", str(fmnist_few), "--recipe", "dino-fashion-mnist", "--steps", "5"]
    assert main([*argv, "--batch-size", "8", "--eval-every", "0.00001", "--out", str(run), *TINY, *dino]) == 0
    metrics = json.loads((run / "metrics.json").read_text())["pretrain"]
    point = metrics["health"][-1]
    assert 0 <= point["teacher_entropy"] <= 1 and point["center_drift"] >= 0 and math.isfinite(point["spread"])
    assert point["student_kl"] >= -1e-6 and 0 <= point["prototype_spread"] <= 1
    assert len(metrics["knn_curve"]) == len(metrics["health"])  # with --eval-every: k-NN at every check
