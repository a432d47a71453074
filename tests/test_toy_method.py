"""Adding a method is a file and a registry line: nothing else (trainer, CLI, evaluation) changes."""

import sys

import pytest

from freelabel.cli import main
from freelabel.methods import REGISTRY

TOY = '''
import torch
import torch.nn as nn
import torch.nn.functional as F

from freelabel.methods.base import Method


class Flip(Method):
    """Pretext: was the view mirrored left to right?"""

    def __init__(self, backbone, views):
        super().__init__()
        self.backbone, self.views = backbone, [views]
        self.head = nn.Linear(backbone.embed_dim, 2)

    def training_step(self, batch):
        x = batch.views[0]
        flipped = torch.arange(len(x), device=x.device) % 2
        x = torch.where(flipped.bool().view(-1, 1, 1, 1), x.flip(-1), x)
        return {"loss": F.cross_entropy(self.head(self.backbone(x)), flipped)}
'''

RECIPE = """
about: a toy pretext task
method: flip
backbone: {name: convnet, args: {widths: [8, 16]}}
views: {size: 28, scale: [0.5, 1.0], mean: [0.5], std: [0.5]}
optim: {name: adamw, lr: 1.0e-3, batch_size: 32, warmup: 0.0}
data: {workers: 0}
budget: {steps: 3}
"""


@pytest.mark.slow  # three training steps through the whole CLI, then k-NN
def test_a_toy_method_trains_and_evaluates_with_a_file_and_a_registry_line(
    tmp_path, monkeypatch, fmnist_folder, capsys
):
    (tmp_path / "toyplugin").mkdir()
    (tmp_path / "toyplugin" / "__init__.py").write_text("")
    (tmp_path / "toyplugin" / "flip.py").write_text(TOY)  # the file
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(REGISTRY, "flip", ("toyplugin.flip:Flip", "pretext: was the view mirrored?"))  # the line
    (tmp_path / "flip.yaml").write_text(RECIPE)
    run = tmp_path / "run"

    assert main(["methods"]) == 0
    assert "flip         pretext: was the view mirrored?" in capsys.readouterr().out
    args = [
        "pretrain",
        "flip",
        "--data",
        str(fmnist_folder),
        "--recipe",
        str(tmp_path / "flip.yaml"),
        "--out",
        str(run),
    ]
    assert main(args) == 0
    assert (run / "backbone.safetensors").is_file()
    assert main(["eval", "knn", str(run), "-k", "5"]) == 0
    out = capsys.readouterr().out
    assert "k-NN top-1 on" in out and "trained      k=5:" in out
    assert main(["pretrain", "flop", "--out", str(tmp_path / "other")]) == 2  # and an unknown name is refused
    assert "unknown method 'flop'; valid: simclr" in capsys.readouterr().err
    assert "toyplugin.flip" in sys.modules
