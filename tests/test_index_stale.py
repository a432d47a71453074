"""An index records the fingerprint of its model's weights and never mixes vectors of two weights."""

import json

from hostile import good_image

from freelabel.cli import main

TINY = [
    "--recipe",
    "simclr-fashion-mnist",
    "--batch-size",
    "4",
    "--set",
    "views.size=16",
    "--set",
    "data.workers=0",
    "--set",
    "backbone.args.widths=[4,8]",
    "--set",
    "method_args.hidden_dim=8",
]


def test_an_index_is_embedded_again_when_its_run_trains_further(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(8):
        (folder / f"{i}.png").write_bytes(good_image(i))
    run, index = tmp_path / "run", tmp_path / "index"
    assert main(["pretrain", "simclr", "--data", str(folder), "--steps", "1", "--out", str(run), *TINY]) == 0
    assert main(["index", "build", str(folder), "--model", str(run), "--out", str(index)]) == 0
    first = json.loads((index / "index.json").read_text())["fingerprint"]
    (folder / "8.png").write_bytes(good_image(8))
    assert main(["index", "build", str(folder), "--model", str(run), "--out", str(index)]) == 0
    assert "1 embedded, 8 unchanged" in capsys.readouterr().out  # same weights: only the new file
    assert main(["pretrain", "--resume", str(run), "--steps", "2"]) == 0  # the run trains one more step
    query = ["index", "search", str(index), "--image", str(folder / "0.png")]
    assert main(query) == 2
    assert "is stale" in capsys.readouterr().err
    assert main(["index", "build", str(folder), "--model", str(run), "--out", str(index)]) == 0
    out = capsys.readouterr().out
    assert "weights changed" in out and "9 embedded, 0 unchanged" in out
    assert json.loads((index / "index.json").read_text())["fingerprint"] != first
    assert main(query) == 0
