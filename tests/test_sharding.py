"""Strategies: the one-line refusals, activation checkpointing, and full state dicts that move a run between
sharded (FSDP), replicated (DDP) and single-process training."""

import pytest
import torch
from safetensors.torch import load_file
from two_processes import in_two_processes, randn

from freelabel.cli import main
from freelabel.train.sharding import full_state, load_full_state

TINY_VIT = ["--backbone", "vit_tiny", "--set", "backbone.args.depth=1", "--set", "backbone.args.patch_size=7",
            "--set", "method_args.hidden_dim=32", "--batch-size", "16", "--precision", "32-true",
            "--accelerator", "cpu"]  # fmt: skip


def test_fsdp_on_the_cpu_and_unknown_strategies_are_refused_in_one_line(tmp_path, capsys):
    assert main(["pretrain", "simclr", "--strategy", "fsdp", "--accelerator", "cpu", "--steps", "1",
                 "--out", str(tmp_path / "run")]) == 2  # fmt: skip
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


def _vit():
    import timm

    torch.manual_seed(0)
    return timm.models.vision_transformer.VisionTransformer(img_size=28, patch_size=7, in_chans=1, embed_dim=32,
                                                           depth=2, num_heads=2, num_classes=0)  # fmt: skip


def _step(model, optimizer, x):
    model(x).pow(2).mean().backward()
    optimizer.step()


def _sharded_step(rank, world, x):
    """One SGD step (with momentum: a state to save) of a ViT sharded over the processes (torch's FSDP2, which
    runs on CPUs, unlike Lightning's FSDP), each on its part of ``x``; the full state dicts, as rank 0 gets them."""
    from torch.distributed.fsdp import fully_shard

    model = _vit()
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    n = len(x) // world
    _step(model, optimizer, x[rank * n : (rank + 1) * n])
    return full_state(model, optimizer)


@pytest.mark.slow
def test_a_sharded_state_resumes_in_one_process_as_if_trained_there():
    """Full state dicts from shards: the weights and momenta are those of one process on the whole batch,
    by parameter name, and they load into a plain model and optimiser that then step on as that one would."""
    x = randn(8, 1, 28, 28)
    weights, optim = in_two_processes(_sharded_step, x)[0]
    model = _vit()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _step(model, optimizer, x)
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
