"""Features are extracted once: k-NN, the linear probe and the report share a run's, and every run with
the same data, backbone and seed shares its random-init and raw-pixel baselines (features and scores)."""

import json

import pytest

import freelabel.evaluate.features as features
from freelabel.cli import main

TINY = ["--set", "backbone.args.widths=[8,16]", "--set", "method_args.hidden_dim=16", "--set", "optim.batch_size=8"]


@pytest.mark.slow  # two tiny runs, then every protocol that reads features
def test_features_are_extracted_once_and_baselines_are_shared_by_runs(tmp_path, monkeypatch, fmnist_few):
    monkeypatch.setenv("FREELABEL_CACHE", str(tmp_path / "cache"))
    runs = {}
    for steps in (2, 3):  # two runs of the same recipe and seed, trained differently
        runs[steps] = tmp_path / f"run{steps}"
        argv = ["pretrain", "simclr", "--data", str(fmnist_few), "--recipe", "simclr-fashion-mnist"]
        assert main([*argv, "--steps", str(steps), "--out", str(runs[steps]), *TINY]) == 0
    passes = []
    real = features.extract
    monkeypatch.setattr(features, "extract", lambda *a, **k: passes.append(a[0]) or real(*a, **k))

    assert main(["eval", "knn", str(runs[2]), "--baselines", "-k", "5"]) == 0
    assert len(passes) == 6  # train and test: trained, random init, raw pixels
    assert main(["eval", "linear", str(runs[2])]) == 0
    assert main(["report", str(runs[2])]) == 0
    assert len(passes) == 6  # the linear probe and the report read them back
    first = json.loads((runs[2] / "metrics.json").read_text())["knn"]

    assert main(["eval", "all", str(runs[3])]) == 0  # k-NN with baselines, then the linear probe
    assert len(passes) == 8  # only the other run's trained features are new
    second = json.loads((runs[3] / "metrics.json").read_text())["knn"]
    assert set(second["random_init"]) == {"top1_k20", "top1_k200"}  # compare's k: scored anew, from the cache
    assert main(["eval", "knn", str(runs[3]), "--baselines", "-k", "5"]) == 0
    third = json.loads((runs[3] / "metrics.json").read_text())["knn"]
    assert (third["random_init"], third["raw_pixels"]) == (first["random_init"], first["raw_pixels"])
    assert len(passes) == 8
    assert sorted(p.name for p in (runs[3] / "features").iterdir()) == sorted(
        p.name for p in (runs[3] / "features").glob(f"{features.key(passes[-1], None)}-*")
    )  # the run's own, of its weights; the baselines are in the shared cache
