"""Defaults that fit the machine: loader workers within the cores, a CPU-sized recipe for photos on a
machine with no GPU, and the speed forecast every run prints."""

import logging

import pytest
import torch
import yaml
from PIL import Image
from skimage import data

import freelabel.hardware as hardware
from freelabel.config import CPU_VIEW_SIZE, BudgetConfig, cpu_recipe, resolve
from freelabel.methods import METHODS
from freelabel.train.forecast import forecast


def test_loader_workers_never_exceed_the_cores(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_cores", lambda: 2)
    assert hardware.loader_workers(8) == 2 and hardware.loader_workers(1) == 1
    assert hardware.loader_workers(8, processes=2) == 1 and hardware.loader_workers(8, processes=4) == 0


def test_every_method_has_a_cpu_recipe_for_colour_photos():
    for method in METHODS:
        name, recipe = cpu_recipe(method)
        cfg = resolve(recipe, {"method": method, "data.name": "/photos"})
        assert name.startswith(method) and len(cfg.views.mean) == 3, method  # colour normalisation
        assert cfg.backbone.name in ("convnet", "vit_tiny") and cfg.budget.minutes, method  # small, and a time budget
        if cfg.backbone.name == "convnet":
            assert cfg.views.size == CPU_VIEW_SIZE
    simclr = resolve(cpu_recipe("simclr")[1], {})
    assert simclr.views.saturation == 0.8 and simclr.views.hue == 0.2  # the paper's colour jitter, not the grey set's


def test_the_forecast_turns_speed_into_the_budget():
    steps = forecast(100.0, 50, BudgetConfig(steps=1000), 600, 10_000)
    assert steps == "expected speed 100 images/s: the 600 steps left of the budget take about 5.0 min of training"
    minutes = forecast(20.0, 50, BudgetConfig(minutes=10), None, 6000)
    assert minutes == "expected speed 20 images/s: the budget of 10 min covers about 12,000 images (2.0 epochs)"


@pytest.mark.slow
def test_a_photo_folder_on_a_cpu_gets_the_cpu_recipe_and_a_forecast(tmp_path, caplog, monkeypatch):
    import torch

    from freelabel.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, img in enumerate([data.astronaut(), data.chelsea(), data.coffee()] * 3):
        Image.fromarray(img).save(folder / f"{i}.jpg")
    caplog.set_level(logging.INFO, logger="freelabel")
    run = tmp_path / "run"
    assert (
        main(
            [
                "pretrain",
                "simclr",
                "--data",
                str(folder),
                "--steps",
                "20",
                "--batch-size",
                "4",
                "--out",
                str(run),
                "--set",
                "method_args.hidden_dim=32",
                "--set",
                "backbone.args.widths=[8,16]",
            ]
        )
        == 0
    )
    assert (
        "no GPU here: pretraining with simclr's CPU-sized recipe (convnet at 64 px); for the paper recipe give "
        "--recipe simclr" in caplog.text
    )
    assert "expected speed" in caplog.text and "the 7 steps left of the budget take about" in caplog.text
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert (
        cfg["recipe"] == "simclr-fashion-mnist" and cfg["views"]["size"] == 64 and cfg["backbone"]["name"] == "convnet"
    )


def test_bf16_is_the_default_only_where_the_kernels_run_it_natively(monkeypatch, tmp_path):
    """bf16 autocast where the CPU has bf16 units and torch's kernels use them; fp32 where the flags lack it or
    the kernels are held below AVX-512 (there bf16 is emulated, many times slower than fp32)."""
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(hardware, "Path", lambda _: cpuinfo)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    cpuinfo.write_text("flags\t: fpu avx2 avx512f avx512_bf16\n")
    assert hardware.resolve_precision("auto") == "bf16-mixed"
    cpuinfo.write_text("flags\t: fpu avx2 fma\n")
    assert hardware.resolve_precision("auto") == "32-true"
    cpuinfo.write_text("flags\t: fpu avx2 avx512f amx_bf16\n")
    assert hardware.resolve_precision("auto") == "bf16-mixed"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert hardware.resolve_precision("auto") == "32-true"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert hardware.resolve_precision("auto") == "32-true"
    assert hardware.resolve_precision("bf16-mixed") == "bf16-mixed"  # asked for: given


def test_the_command_lets_openmp_threads_sleep_unless_told_otherwise():
    import os
    import subprocess
    import sys

    show = "import os, freelabel.cli; print(os.environ['OMP_WAIT_POLICY'])"  # set before torch is loaded
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", show], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", show], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "ACTIVE"
