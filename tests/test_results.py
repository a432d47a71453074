"""Results are data: rows in results/, appended once each, and the tables of docs/results.md and the
README rendered from them; a hand-edited table is stale and fails the suite."""

import json
import shutil
from pathlib import Path

from freelabel.cli import main
from freelabel.results import BEGIN, read, record, render, stale

ROOT = Path(__file__).resolve().parent.parent


def test_the_rendered_tables_are_what_the_rows_give():
    assert stale(ROOT) == [], "run `freelabel results` and commit what it writes"


def test_a_hand_edited_table_is_stale_until_rendered_again(tmp_path, capsys):
    for part in ("results", "docs"):
        shutil.copytree(ROOT / part, tmp_path / part)
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    assert main(["results", "--check", "--root", str(tmp_path)]) == 0
    doc, readme = tmp_path / "docs" / "results.md", tmp_path / "README.md"
    doc.write_text(doc.read_text().replace("| simclr", "| SimCLR", 1))
    before, after = readme.read_text().split(BEGIN)
    readme.write_text(before + BEGIN + after.replace("|", "¦", 3))
    assert main(["results", "--check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert str(doc) in err and str(readme) in err
    assert main(["results", "--root", str(tmp_path)]) == 0
    assert main(["results", "--check", "--root", str(tmp_path)]) == 0
    assert readme.read_text().split(BEGIN)[0] == before  # only the generated part changes


def test_a_row_is_recorded_once_with_where_it_was_measured(tmp_path):
    rows = [{"table": "suite", "measured": "a", "metric": "time", "value": 1.5, "unit": "s", "source": "x"}]
    assert record(tmp_path / "r.jsonl", rows) == 1
    assert record(tmp_path / "r.jsonl", rows) == 0  # the same measurement again: a table resumed, not doubled
    assert record(tmp_path / "r.jsonl", [rows[0] | {"source": "y", "value": 2.5}]) == 1  # another measurement
    got = read(tmp_path)
    assert [r["value"] for r in got] == [1.5, 2.5] and all(r["cpu"] and r["date"] and r["torch"] for r in got)
    assert "| a (s) | 2.00 ± 0.71 (2) |" in render(got)  # mean ± sd (n) of the repeated measurement
    (tmp_path / "r.jsonl").write_text((tmp_path / "r.jsonl").read_text() + json.dumps(rows[0])[:20])  # torn
    assert len(read(tmp_path)) == 2
