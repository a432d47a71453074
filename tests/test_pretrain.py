import json
import os
import shutil
import signal

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import freelabel.engine as engine
from freelabel.cli import main

pytestmark = pytest.mark.slow  # every test here trains

TINY = ["--batch-size", "32", "--set", "method_args.hidden_dim=64", "--set", "backbone.args.widths=[16,32]"]


def losses(run) -> list[float]:
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return [e.value for e in acc.Scalars("train/loss")]


def test_tiny_pretrain_then_knn_on_an_image_folder(fmnist_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "pretrain",
                "simclr",
                "--data",
                str(fmnist_folder),
                "--recipe",
                "simclr-fashion-mnist",
                "--steps",
                "6",
                "--out",
                str(run),
                "--set",
                "log_every=1",
                *TINY,
            ]
        )
        == 0
    )
    for name in ("config.yaml", "metrics.json", "backbone.safetensors", "log.txt"):
        assert (run / name).is_file(), name
    assert len(losses(run)) == 6
    assert main(["eval", "knn", str(run), "--baselines"]) == 0
    printed = capsys.readouterr().out
    assert "trained" in printed and "random_init" in printed and "raw_pixels" in printed
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["pretrain"]["steps"] == 6 and metrics["pretrain"]["skipped_files"] == 0
    knn = metrics["knn"]
    assert knn["test_images"] == 80
    for name in ("trained", "random_init", "raw_pixels"):
        assert 10 < knn[name]["top1_k20"] <= 100  # 10 classes: far above chance on real images


def test_resume_continues_with_the_same_losses_and_weights(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    args = ["pretrain", "simclr", "--steps", "6", "--set", "checkpoint_every=3", "--set", "log_every=1", *TINY]
    assert main([*args, "--out", str(full)]) == 0
    shutil.copytree(full, part)
    # Make `part` look like a run stopped after its step-3 checkpoint.
    shutil.rmtree(part / "checkpoints" / "step-00000006")
    (part / "backbone.safetensors").unlink()
    shutil.rmtree(part / "tb")
    assert main(["pretrain", "--resume", str(part)]) == 0
    assert losses(part) == pytest.approx(losses(full)[3:], abs=1e-6)
    a, b = load_file(str(full / "backbone.safetensors")), load_file(str(part / "backbone.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_ctrl_c_leaves_a_resumable_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    real = engine.step_generator

    def interrupt_at_step_4(seed, step):
        if step == 4:
            raise KeyboardInterrupt
        return real(seed, step)

    monkeypatch.setattr(engine, "step_generator", interrupt_at_step_4)
    assert main(["pretrain", "simclr", "--steps", "8", "--out", str(run), *TINY]) == 130
    assert (run / "checkpoints" / "step-00000004").is_dir()
    monkeypatch.setattr(engine, "step_generator", real)
    assert main(["pretrain", "--resume", str(run)]) == 0
    assert json.loads((run / "metrics.json").read_text())["pretrain"]["steps"] == 8


def test_nan_loss_stops_with_advice_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    from freelabel.methods.simclr import SimCLR

    real = SimCLR.training_step

    def nan_after_3(self, batch):
        out = real(self, batch)
        self.calls = getattr(self, "calls", 0) + 1
        return {"loss": out["loss"] * float("nan")} if self.calls > 3 else out

    monkeypatch.setattr(SimCLR, "training_step", nan_after_3)
    assert main(["pretrain", "simclr", "--steps", "8", "--out", str(run), "--set", "checkpoint_every=2", *TINY]) == 2
    err = capsys.readouterr().err
    assert "loss became nan at step 3" in err and "--lr" in err and "Traceback" not in err
    ckpt = load_file(str(run / "checkpoints" / "step-00000002" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in ckpt.values())


def test_paper_recipe_trains_with_lars_on_a_folder(fmnist_folder, tmp_path):
    run = tmp_path / "run"
    assert (
        main(
            [
                "pretrain",
                "simclr",
                "--recipe",
                "simclr",
                "--data",
                str(fmnist_folder),
                "--backbone",
                "resnet18",
                "--steps",
                "2",
                "--batch-size",
                "8",
                "--set",
                "views.size=32",
                "--set",
                "data.workers=0",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["optim"]["name"] == "lars" and cfg["backbone"]["name"] == "resnet18" and cfg["data"]["channels"] == 3


def test_a_finished_run_is_not_overwritten(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "simclr", "--steps", "1", "--out", str(run), *TINY]) == 0
    before = (run / "backbone.safetensors").read_bytes()
    assert main(["pretrain", "simclr", "--steps", "1", "--out", str(run), *TINY]) == 2
    assert "already holds a run; continue it with `freelabel pretrain --resume" in capsys.readouterr().err
    assert (run / "backbone.safetensors").read_bytes() == before


# Per method, what makes it tiny: one-block ViTs and no BatchNorm (per-process batch statistics are the one thing
# DDP does not make global; SyncBatchNorm needs CUDA).
TWO_PROCESS_METHODS = {
    "simclr": ["--set", "method_args.proj_layers=1"],
    "dino": [
        "--set",
        "method_args.out_dim=256",
        "--set",
        "method_args.hidden_dim=64",
        "--set",
        "method_args.bottleneck_dim=32",
        "--set",
        "method_args.local_crops=2",
    ],
    "mae": [
        "--set",
        "method_args.decoder_dim=32",
        "--set",
        "method_args.decoder_depth=1",
        "--set",
        "method_args.decoder_heads=2",
        "--set",
        "views.mean=[0.5,0.5,0.5]",
        "--set",
        "views.std=[0.5,0.5,0.5]",
    ],
}


@pytest.mark.parametrize("method", TWO_PROCESS_METHODS)
def test_two_processes_train_exactly_as_one(method, fmnist_folder, tmp_path):
    """The whole engine with 2 CPU processes of batch 16 (``--batch-size`` is per process), against 1 process
    holding all 32: with random views, crops and masks (each sample's are drawn for the global batch, whatever
    the split), fp32 and SGD (Adam would blow float noise in null gradients, e.g. of the key biases, up to whole
    steps), the loss curves and the trained weights agree, and only rank 0 writes the log. SimCLR's processes
    are started by torchrun itself; the others' are forked the way torchrun starts them (seconds, not tens)."""
    import subprocess
    import sys

    from two_processes import forked_cli

    common = [
        "--precision",
        "32-true",
        "--accelerator",
        "cpu",
        "--steps",
        "3",
        "--recipe",
        f"{method}-fashion-mnist",
        "--set",
        "log_every=1",
        "--backbone",
        "vit_tiny",
        "--set",
        "backbone.args.depth=1",
        "--set",
        "backbone.args.patch_size=7",
        "--set",
        "optim.name=sgd",
        "--set",
        "optim.lr=0.5",
        "--set",
        "optim.warmup=0",
        "--data",
        str(fmnist_folder),
        *TWO_PROCESS_METHODS[method],
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["pretrain", method, "--out", str(one), "--batch-size", "32", *common]) == 0
    argv = ["pretrain", method, "--devices", "2", "--batch-size", "16", "--out", str(two), *common]
    if method == "simclr":
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "freelabel.cli"]
        done = subprocess.run([*launch, *argv], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    else:
        assert forked_cli(argv) == [0, 0]
    assert losses(two) == pytest.approx(losses(one), abs=1e-5)
    a, b = load_file(str(one / "backbone.safetensors")), load_file(str(two / "backbone.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    log = (two / "log.txt").read_text()
    assert log.count(f"{method} on ") == 1 and "2 device(s)" in log


def test_two_processes_stop_together_on_ctrl_c_and_resume_exactly_with_unreadable_files(fmnist_folder, tmp_path):
    """Ctrl-C in one process of two: both stop after the same step and save one checkpoint, from which
    the run resumes to exactly the weights of the run that was never stopped. A fifth of the files cannot
    be read, so each process fills its batches past a different number of them (its own place in the
    epoch, saved for each), and the epochs end for both when one has no full batch left."""
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from two_processes import forked_cli

    folder = tmp_path / "images"
    folder.mkdir()
    for i, path in enumerate(sorted(fmnist_folder.rglob("*.png"))[:60]):
        shutil.copy(path, folder / f"{i:03d}.png")
        if i % 3 == 0:
            (folder / f"{i:03d}-broken.png").write_bytes(b"not an image")

    def ctrl_c_in_rank_1_after_step(n: int):
        def install(rank: int) -> None:
            steps = [0]

            def hook(optimizer, args, kwargs):
                steps[0] += 1
                if rank == 1 and steps[0] == n:
                    os.kill(os.getpid(), signal.SIGINT)

            register_optimizer_step_post_hook(hook)

        return install

    train = [
        "pretrain",
        "simclr",
        "--devices",
        "2",
        "--accelerator",
        "cpu",
        "--data",
        str(folder),
        "--recipe",
        "simclr-fashion-mnist",
        "--steps",
        "7",
        "--batch-size",
        "8",
        "--set",
        "log_every=1",
        "--set",
        "checkpoint_every=100",
        "--set",
        "data.workers=0",
        *TINY[2:],
    ]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert forked_cli([*train, "--out", str(whole)]) == [0, 0]
    assert "2 device(s)" in (whole / "log.txt").read_text()
    assert forked_cli([*train, "--out", str(stopped)], ctrl_c_in_rank_1_after_step(4)) == [130, 130]
    assert "interrupted at step 4" in (stopped / "log.txt").read_text()
    assert [p.name for p in (stopped / "checkpoints").iterdir()] == ["step-00000004"]
    assert forked_cli(["pretrain", "--resume", str(stopped)]) == [0, 0]
    assert losses(stopped) == losses(whole)
    a, b = load_file(str(whole / "backbone.safetensors")), load_file(str(stopped / "backbone.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = json.loads((stopped / "metrics.json").read_text())["pretrain"]
    assert metrics["skipped_files"] == 20 and metrics["steps"] == 7  # both processes' unreadable files


def test_sync_bn_on_cpu_processes_is_refused_clearly(tmp_path, capsys):
    """Before any process starts or anything is written (so torchrun's processes refuse it alike)."""
    argv = ["pretrain", "simclr", "--devices", "2", "--accelerator", "cpu", "--set", "sync_bn=true", "--steps", "1"]
    assert main([*argv, "--out", str(tmp_path / "run"), *TINY]) == 2
    assert "sync_bn needs CUDA devices" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing written: the same command runs once fixed
