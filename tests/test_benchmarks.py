"""The benchmark scripts run end to end at a tiny size on the CPU, so that they cannot rot."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _check(row: dict) -> None:
    """Finite, positive and self-consistent; never a bound that holds on one CPU and not another."""
    assert all(math.isfinite(v) and v > 0 for k, v in row.items() if isinstance(v, float) and k != "decode_share")
    assert row["images_per_s"] == pytest.approx(row["batch"] / (row["model_seconds"] + row["views_seconds"]))
    tflop_per_s = row["step_tflop"] / row["model_seconds"]
    assert row["mfu"] == pytest.approx(tflop_per_s / row["peak_tflop_per_s"])
    assert 0 <= row["decode_share"] < 1 and 0 < row["views_share"] < 1
    assert row["decode_share"] + row["views_share"] < 1


@pytest.mark.slow
def test_the_gpu_benchmark_runs_every_case_and_lightly_on_a_cpu(capsys):
    pytest.importorskip("lightly")
    rows = _script("gpu").run(tiny=True, steps=1, workers=0)
    assert [r["case"] for r in rows] == ["mae", "dino", "dinov2", "simclr"]
    for row in rows:
        _check(row)
    assert rows[-1]["lightly_ratio"] > 0
    out = capsys.readouterr().out
    assert "lightly" in out and "MFU" in out and "TFLOP/s" in out


@pytest.mark.slow
def test_the_cpu_profile_runs_and_names_the_cpu(capsys):
    rows = _script("cpu_profile").run(batch=8, steps=1, top=3)
    assert rows[0]["precision"] == "32-true" and len(rows) in (1, 2)
    for row in rows:
        assert row["images_per_s"] > 0 and row["model_gflop_per_s"] > 0 and row["matmul_gflop_per_s"] > 0
    out = capsys.readouterr().out
    assert "flags:" in out and "convolution" in out  # the CPU, then where the time went


@pytest.mark.slow
def test_the_throughput_benchmark_times_both_libraries_and_names_the_cpu(capsys):
    pytest.importorskip("lightly")
    med = _script("simclr_throughput").run(rounds=1, steps=1, batch=8, workers=0, precision="32-true")
    assert all(v > 0 for v in med.values()) and med["e2e_l32"] == med["e2e_l"]  # fp32 asked: one lightly figure
    out = capsys.readouterr().out
    assert "torch kernels:" in out and "ratio" in out


@pytest.mark.slow
def test_the_method_benchmark_trains_both_libraries(monkeypatch, capsys):
    pytest.importorskip("lightly")
    args = ["methods_vs_lightly", "--minutes", "0.02", "--methods", "simclr", "--knn-subset", "300", "--workers", "0"]
    monkeypatch.setattr("sys.argv", args)
    _script("methods_vs_lightly").main()
    out = capsys.readouterr().out
    assert "simclr: freelabel k-NN" in out and "simclr: lightly k-NN" in out


def test_a_recipe_sweep_records_each_point_once_and_renders_it_beside_raw_pixels(tmp_path, monkeypatch):
    sweep = _script("recipe_sweep")
    trained = []
    monkeypatch.setattr(sweep, "compare", lambda spec, data, where, **kw: trained.append((where, kw["overrides"])))
    scores = {"knn_top1_k20": 85.0, "linear_top1": 86.0}
    fake = [
        {"table": "leaderboard", "data": "fashion-mnist", "budget": "0.5 minutes", "method": "simclr"}
        | {"recipe": "simclr-fashion-mnist", "seed": 0, "baselines": {"raw_pixels": 84.59}, "precision": "32-true"}
        | {"metric": m, "heading": m, "value": v, "protocol": m}
        for m, v in scores.items()
    ]
    monkeypatch.setattr(sweep, "result_rows", lambda run, *a: [r | {"source": str(run)} for r in fake])
    path = tmp_path / "results" / "sweeps.jsonl"
    args = ("simclr", ["", "optim.lr=2e-3 optim.batch_size=64"], 0.5, "fashion-mnist", "simclr-fashion-mnist")
    sweep.sweep(*args, [0], tmp_path / "runs", path)
    assert [o for _, o in trained] == [{}, {"optim.lr": 2e-3, "optim.batch_size": 64}]
    assert trained[1][0].name == "lr-2e-3_batch-size-64-seed0"
    sweep.sweep(*args, [0], tmp_path / "runs", path)  # run again: every point is held, none trained
    assert len(trained) == 2
    from freelabel.results import read, render

    page = render(read(path.parent))
    assert "| `optim.lr=2e-3 optim.batch_size=64` | 85.00 | 86.00 |" in page and "the recipe as it was" in page
    assert "Raw pixels, k-NN k=20: 84.59." in page
