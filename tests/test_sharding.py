"""Strategies: the one-line refusals, activation checkpointing, torch.compile, and full state dicts that move a run between
sharded (FSDP), replicated (DDP) and single-process training."""

import pytest
import torch
from safetensors.torch import load_file
from two_processes import in_two_processes, randn

from freelabel.cli import main
from freelabel.encoder import load_encoder
from freelabel.train.sharding import full_state, load_full_state

TINY_VIT = [
    "--backbone",
    "vit_tiny",
    "--set",
    "backbone.args.depth=1",
    "--set",
    "backbone.args.patch_size=7",
    "--set",
    "method_args.hidden_dim=32",
    "--batch-size",
    "16",
    "--precision",
    "32-true",
    "--accelerator",
    "cpu",
]


def test_fsdp_on_the_cpu_and_unknown_strategies_are_refused_in_one_line(tmp_path, capsys):
    assert (
        main(
            [
                "pretrain",
                "simclr",
                "--strategy",
                "fsdp",
                "--accelerator",
                "cpu",
                "--steps",
                "1",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--strategy fsdp needs CUDA devices" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "config.yaml").exists()
    assert main(["pretrain", "simclr", "--set", "strategy=zero3", "--steps", "1", "--out", str(tmp_path / "b")]) == 2
    assert "strategy 'zero3' is not one of ddp, fsdp" in capsys.readouterr().err


@pytest.mark.slow
def test_activation_checkpointing_trains_exactly_as_without(tmp_path):
    runs = {}
    for name, extra in (("plain", []), ("ckpt", ["--set", "activation_checkpointing=true"])):
        runs[name] = tmp_path / name
        assert main(["pretrain", "simclr", "--steps", "2", "--out", str(runs[name]), *TINY_VIT, *extra]) == 0
    a, b = (load_file(str(runs[n] / "backbone.safetensors")) for n in ("plain", "ckpt"))
    assert a.keys() == b.keys()  # no wrapper in the names
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_a_compiled_method_trains_as_the_eager_one_on_the_cpu(tmp_path):
    """``compile: true`` runs the method through ``torch.compile`` (inductor's CPU code): same weights, up to
    the order of floating-point sums, and a run folder without the compiler's wrapper in its names."""
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["--set", "compile=true"])):
        runs[name] = tmp_path / name
        assert main(["pretrain", "simclr", "--steps", "2", "--out", str(runs[name]), *TINY_VIT, *extra]) == 0
    a, b = (load_file(str(runs[n] / "backbone.safetensors")) for n in ("eager", "compiled"))
    init = load_encoder(runs["eager"], trained=False).backbone.state_dict()
    assert a.keys() == b.keys() <= init.keys()
    moved = torch.cat([(a[k] - init[k]).flatten() for k in a]).norm()
    apart = torch.cat([(a[k] - b[k]).flatten() for k in a]).norm()
    assert moved > 0 and apart < 0.05 * moved  # the two took the same steps (Adam magnifies rounding a little)


def _vit():
    import timm

    torch.manual_seed(0)
    return timm.models.vision_transformer.VisionTransformer(
        img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=2, num_heads=2, num_classes=0
    )


def _step(model, optimizer, x):
    model(x).pow(2).mean().backward()
    optimizer.step()


def _sharded(rank, world):
    """A ViT sharded over the processes with torch's FSDP2 (which runs on CPUs, unlike Lightning's FSDP), and
    its optimiser: SGD with momentum, a state to save."""
    from torch.distributed.fsdp import fully_shard

    model = _vit()
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def _sharded_steps(rank, world, x, resume_from):
    """Each process steps on its part of ``x``: one step from the start, and one step on from the full state
    ``resume_from``; the full state dicts after each, as rank 0 gets them."""
    n = len(x) // world
    mine = x[rank * n : (rank + 1) * n]
    model, optimizer = _sharded(rank, world)
    _step(model, optimizer, mine)
    first = full_state(model, optimizer)
    model, optimizer = _sharded(rank, world)
    load_full_state(model, optimizer, *resume_from)
    _step(model, optimizer, mine)
    return first, full_state(model, optimizer)


@pytest.mark.slow
def test_full_state_dicts_move_a_run_between_shards_and_one_process():
    """From shards to one process: the weights and momenta are those of one process on the whole batch, by
    parameter name, and one process steps on from them as it would have. From one process to shards: the
    sharded run steps on from the full state as one process does."""
    x = randn(8, 1, 28, 28)
    model = _vit()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _step(model, optimizer, x)
    one_step = full_state(model, optimizer)
    (weights, optim), (resharded, _) = in_two_processes(_sharded_steps, x, one_step)[0]
    assert weights.keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(weights[k], v, atol=1e-5, rtol=0)
    resumed = _vit()
    resumed_opt = torch.optim.SGD(resumed.parameters(), lr=0.1, momentum=0.9)
    load_full_state(resumed, resumed_opt, weights, optim)
    for opt in (optimizer, resumed_opt):
        opt.zero_grad()
    _step(model, optimizer, x)
    _step(resumed, resumed_opt, x)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, atol=1e-5, rtol=0)
        torch.testing.assert_close(resharded[k], v, atol=1e-5, rtol=0)


def test_optimisers_are_fused_on_gpus_only(monkeypatch):
    from freelabel.config import load_recipe, resolve
    from freelabel.engine import build_optimizer

    model = torch.nn.Linear(4, 4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for name, accelerator, fused in (
        ("adamw", "auto", True),
        ("sgd", "cuda", True),
        ("adamw", "cpu", False),
        ("lars", "cuda", False),
    ):
        cfg = resolve(load_recipe("simclr-fashion-mnist"), {"optim.name": name, "accelerator": accelerator})
        assert bool(build_optimizer(model, cfg, world=1).defaults.get("fused")) is fused, (name, accelerator)
