import base64
import csv
import json
import re

import numpy as np
import pytest
import tiny_models
from browser import check_page, start_browser

from freelabel.cli import main
from freelabel.report import data_uri, environment, render
from freelabel.report.figures import permutations

TINY = [
    "--set",
    "method_args.hidden_dim=64",
    "--set",
    "backbone.args.widths=[16,32]",
    "--set",
    "log_every=1",
    "--set",
    "optim.batch_size=32",
]


@pytest.fixture(scope="module")
def browser():
    try:
        driver = start_browser()
    except RuntimeError as e:
        pytest.skip(f"no browser to check the page in: {e}")
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def run(tmp_path_factory, fmnist_folder):
    """A tiny SimCLR run on real images, with its k-NN curve and k-NN next to both baselines."""
    run = tmp_path_factory.mktemp("report") / "run"
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
                "--eval-every",
                "0.0001",
                "--out",
                str(run),
                *TINY,
            ]
        )
        == 0
    )
    assert main(["eval", "knn", str(run), "--baselines"]) == 0
    (run / "permutations.json").write_text(json.dumps([[0, 1, 2, 3], [3, 2, 1, 0], [1, 0, 3, 2]]))  # as jigsaw leaves
    (run / "attention").mkdir()  # as the attention-map evaluation leaves
    for i in range(2):
        (run / "attention" / f"trained-{i:03d}.png").write_bytes(permutations(np.array([[0, 1], [1, 0]])))
    assert main(["report", str(run)]) == 0
    return run


def images_of(page: str) -> dict[str, str]:
    """``{alt: src}`` of every ``<img>``."""
    found = {alt: src for src, alt in re.findall(r'<img src="([^"]*)" alt="([^"]*)"', page)}
    assert len(found) == page.count("<img ")
    return found


CORRUPT = {
    "bytes garbled": lambda png: data_uri(png[:8] + b"garbage" + png[40:]),
    "cut short": lambda png: data_uri(png[: len(png) // 3]),
    "not base64": lambda png: "data:image/png;base64,@!",
}


def small_page(tmp_path, corrupt: str | None = None, extra: str = "") -> str:
    """The report template with two real matplotlib pictures; ``corrupt``: how to break the second one."""
    pictures = {name: permutations(np.array(p)) for name, p in (("first", [[0, 1], [1, 0]]), ("second", [[0, 1, 2]]))}
    pictures = {k: data_uri(v) for k, v in pictures.items()}
    if corrupt:
        pictures["second"] = CORRUPT[corrupt](base64.b64decode(pictures["second"].split(",", 1)[1]))
    page = render(
        {
            "title": "t",
            "subtitle": "s",
            "config": "c",
            "environment": environment(),
            "tables": [],
            "curves": None,
            "features": None,
            "artefacts": [{"title": k, "src": v} for k, v in pictures.items()],
        }
    )
    path = tmp_path / "page.html"
    path.write_text(page.replace("</body>", extra + "</body>"))
    return path


@pytest.mark.slow
def test_report_holds_every_part_inline(run):
    page = (run / "report.html").read_text()
    found = images_of(page)
    assert set(found) == {
        "training curves",
        "t-SNE map of test features",
        "nearest training images of test images",
        "permutations.json",
        "attention/trained-000",
        "attention/trained-001",
    }
    for src in found.values():
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG")
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing to fetch from anywhere
    metrics = json.loads((run / "metrics.json").read_text())
    for name in ("trained", "random init", "raw pixels"):  # the k-NN table, next to both baselines
        assert f"<td>{name}</td>" in page
    assert f"{metrics['knn']['raw_pixels']['top1_k20']:.2f}" in page
    assert "method: simclr" in page and "torchvision" in page  # resolved config and environment


@pytest.mark.slow
def test_report_of_a_run_whose_data_is_gone_says_so(run, tmp_path):
    import shutil

    import yaml

    from freelabel.report import make_report

    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    cfg = yaml.safe_load((moved / "config.yaml").read_text())
    cfg["data"]["name"] = str(tmp_path / "gone")
    (moved / "config.yaml").write_text(yaml.safe_dump(cfg))
    page = make_report(moved).read_text()
    assert "No feature map or neighbours: the data cannot be opened here" in page
    assert {"training curves", "permutations.json"} <= set(images_of(page))


@pytest.mark.slow
def test_real_report_passes_the_browser_check(run, browser):
    shot = run / "report-screenshot.png"
    assert check_page(browser, run / "report.html", shot) == []
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 50_000


def test_browser_check_passes_a_sound_page(tmp_path, browser):
    assert check_page(browser, small_page(tmp_path)) == []


@pytest.mark.parametrize("corrupt", CORRUPT)
def test_browser_check_catches_a_broken_image(tmp_path, browser, corrupt):
    problems = check_page(browser, small_page(tmp_path, corrupt=corrupt))
    assert problems[0] in ("image did not load: second", "image is cut short or corrupt: second")
    assert not any("first" in p for p in problems)


def test_browser_check_catches_a_request_leaving_the_machine_and_console_errors(tmp_path, browser):
    outside = '<link rel="stylesheet" href="http://192.0.2.1/style.css"><script>console.error("boom")</script>'
    problems = check_page(browser, small_page(tmp_path, extra=outside))
    assert "request left the machine: http://192.0.2.1/style.css" in problems
    assert any("console SEVERE" in p and "boom" in p for p in problems)


def test_report_of_a_pretrained_model(tmp_path, fmnist_folder):
    model = tiny_models.Folders(tmp_path)["vit"]
    out = tmp_path / "report"
    assert (
        main(
            [
                "report",
                "--model",
                str(model),
                "--data",
                str(fmnist_folder),
                "--out",
                str(out),
                "--train-images",
                "200",
                "--test-images",
                "60",
            ]
        )
        == 0
    )
    page = (out / "report.html").read_text()
    assert set(images_of(page)) == {"t-SNE map of test features", "nearest training images of test images"}
    assert "<td>pretrained</td>" in page and "<td>raw pixels</td>" in page
    assert "test_images: 60" in page


def test_bad_report_requests_get_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert main(["report", str(tmp_path), "--model", "x"]) == 2
    assert main(["compare", "simclr", "nosuch", "--steps", "3", "--out", str(tmp_path / "c")]) == 2
    assert main(["compare", "simclr", "simclr", "--steps", "3", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 4 and "Traceback" not in err and "unknown method 'nosuch'" in err
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_compare_two_methods_then_resume(tmp_path, fmnist_folder, capsys, browser):
    out = tmp_path / "compare"
    # byol's paper recipe (a ResNet-50) cannot take the small CNN's widths: it fails, the others go on.
    args = [
        "compare",
        "simclr:simclr-fashion-mnist",
        "byol",
        "rotation:rotation-fashion-mnist",
        "--data",
        str(fmnist_folder),
        "--steps",
        "3",
        "--out",
        str(out),
        *TINY,
    ]
    assert main(args) == 1
    assert "byol did not finish" in capsys.readouterr().err
    *rows, failed = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert failed["name"] == "byol" and failed["status"] == "failed" and failed["error"].startswith("BackboneError")
    assert sorted(r["name"] for r in rows) == ["rotation-fashion-mnist", "simclr-fashion-mnist"]
    for r in rows:
        assert r["status"] == "done" and r["steps"] == "3"
        assert 10 < float(r["knn_top1_k20"]) <= 100 and 10 < float(r["random_init_k20"]) <= 100
        assert 10 < float(r["linear_top1"]) <= 100
        assert float(r["images_per_s"]) > 0 and float(r["peak_memory_mb"]) > 100  # a process holding torch
        assert (out / r["name"] / "report.html").is_file()
    assert [float(r["knn_top1_k20"]) for r in rows] == sorted((float(r["knn_top1_k20"]) for r in rows), reverse=True)
    md = (out / "leaderboard.md").read_text()
    assert (
        "| rank | name | recipe | backbone | k-NN k=20 |" in md
        and "Raw pixels" in md
        and "- byol failed: Backbone" in md
    )
    html = (out / "leaderboard.html").read_text()
    assert 'href="simclr-fashion-mnist/report.html"' in html and 'href="rotation-fashion-mnist/report.html"' in html
    assert check_page(browser, out / "leaderboard.html") == []

    stamps = {n: (out / n / "backbone.safetensors").stat().st_mtime_ns for n in ("simclr-fashion-mnist",)}
    (out / "leaderboard.csv").unlink()
    # again, without rotation: simclr, finished, is not trained again but fine-tuned (5 labels a class),
    # byol is retried, the leaderboard is written again
    assert main([a for a in args if not a.startswith("rotation")] + ["--finetune", "5"]) == 1
    assert stamps == {n: (out / n / "backbone.safetensors").stat().st_mtime_ns for n in stamps}
    tuned = {r["name"]: r for r in csv.DictReader((out / "leaderboard.csv").open())}
    assert all(10 < float(tuned[n]["finetune_top1"]) <= 100 for n in stamps) and "byol" in tuned
    assert "| fine-tuned (5 labels) |" in (out / "leaderboard.md").read_text()
    assert main([*args, "--finetune", "0%"]) == 2 and "a percentage in (0, 100]" in capsys.readouterr().err
    assert main([*args, "--seed", "1"]) == 2  # a run of the same folder with another seed would not compare
    assert "another seed" in capsys.readouterr().err


def test_compare_all_plans_every_recipe_for_the_data_at_one_budget():
    from freelabel.compare import plan
    from freelabel.config import ConfigError, list_recipes

    entries = plan(["all"], "fashion-mnist", {"minutes": 10, "steps": None, "epochs": None}, seed=3)
    assert sorted(e.cfg.recipe for e in entries) == [r for r in list_recipes() if r.endswith("-fashion-mnist")]
    assert "simclr" in [e.name for e in entries] and "dinov2-gram-fashion-mnist" in [e.name for e in entries]
    assert {(e.cfg.budget.minutes, e.cfg.seed, e.cfg.data.name) for e in entries} == {(10, 3, "fashion-mnist")}
    with pytest.raises(ConfigError, match="no recipe is made for"):
        plan(["all"], "/some/folder", {"minutes": 10, "steps": None, "epochs": None})
