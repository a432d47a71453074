"""Adding a protocol is a file and a registry line: the command line, compare, the leaderboard and the
report take it with nothing else changed."""

import csv
import json

import pytest

from freelabel.cli import main
from freelabel.evaluate import PROTOCOLS, Column, Option, Protocol
from freelabel.results import read

TOY = '''
from freelabel.evaluate.common import load_model, open_split, record
from freelabel.evaluate.features import features


def evaluate_norms(spec, data=None, scale=1.0):
    """The mean L2 norm of the pooled features of the test images, times ``scale``."""
    model = load_model(spec)
    data = data or model.default_data
    x = features(model, data, "test", open_split(model, data, "test")).x
    results = {"data": data, "trained": {"mean_norm": float(x.norm(dim=1).mean()) * scale}}
    record(model, "norms", results)
    return results


def summary(results):
    return [f"norms on {results['data']}: {results['trained']['mean_norm']:.3f}"]
'''

LINE = Protocol(
    "toyprotocol.norms:evaluate_norms",
    "toyprotocol.norms:summary",
    "the mean norm of the pooled features",
    options=(Option(("--scale",), "scale", "a factor", "positive", 1.0),),
    compare={"scale": 1.0},
    columns=(Column("mean_norm", "mean norm", ("trained", "mean_norm")),),
)


@pytest.mark.slow  # a compare of one method: training, k-NN, the linear probe, the toy, the report
def test_a_toy_protocol_runs_through_the_cli_compare_and_the_report(tmp_path, monkeypatch, fmnist_few, capsys):
    (tmp_path / "toyprotocol").mkdir()
    (tmp_path / "toyprotocol" / "__init__.py").write_text("")
    (tmp_path / "toyprotocol" / "norms.py").write_text(TOY)  # the file
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(PROTOCOLS, "norms", LINE)  # the line

    assert main(["eval", "--help"]) == 0
    assert "norms" in capsys.readouterr().out
    out = tmp_path / "compare"
    tiny = ["--set", "backbone.args.widths=[8,16]", "--set", "method_args.hidden_dim=16", "--set", "optim.batch_size=8"]
    args = [
        "compare",
        "simclr:simclr-fashion-mnist",
        "--data",
        str(fmnist_few),
        "--steps",
        "2",
        "--out",
        str(out),
        *tiny,
    ]
    assert main([*args, "--record", str(tmp_path / "results" / "leaderboard.jsonl")]) == 0
    (row,) = csv.DictReader((out / "leaderboard.csv").open())
    norm = float(row["mean_norm"])
    assert norm > 0 and row["status"] == "done" and "| mean norm |" in (out / "leaderboard.md").read_text()
    run = out / "simclr-fashion-mnist"
    assert json.loads((run / "metrics.json").read_text())["norms"]["trained"]["mean_norm"] == norm
    recorded = {r["metric"]: r for r in read(tmp_path / "results")}  # and its rows of the results table
    assert recorded["mean_norm"]["value"] == norm and recorded["mean_norm"]["heading"] == "mean norm"
    assert {"knn_top1_k20", "linear_top1", "steps"} <= set(recorded) and recorded["steps"]["cpu"]
    assert "<h3>norms</h3>" in (run / "report.html").read_text()  # its section of metrics.json, as a table
    capsys.readouterr()
    assert main(["eval", "norms", str(run), "--scale", "2"]) == 0
    assert capsys.readouterr().out.strip() == f"norms on {fmnist_few}: {2 * norm:.3f}"
    assert main(["eval", "norms", str(run), "--scale", "-1"]) == 2  # its option's type checks the value
