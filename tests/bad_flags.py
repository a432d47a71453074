"""Every kind of bad flag and value the CLI must answer with one line and exit status 2.

``python tests/bad_flags.py`` runs each case as a real command (a fresh interpreter; ``--in-process``:
all in this one, faster) and prints the Markdown table "command -> exit status, the line on stderr"; ``tests/test_bad_flags.py`` runs the same
cases in one process and asserts exit status 2, one line, and no traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PRETRAIN = [
    "pretrain",
    "simclr",
    "--recipe",
    "simclr-fashion-mnist",
    "--steps",
    "1",
    "--batch-size",
    "4",
    "--set",
    "views.size=16",
    "--set",
    "data.workers=0",
    "--set",
    "backbone.args={widths: [4, 8]}",
]


def cases(root: Path) -> list[tuple[str, list[str]]]:
    """(what is wrong, argv) with the files the cases need made under ``root`` (a run and an index
    are made by :func:`make_fixtures`)."""
    run, index, images = root / "run", root / "index", root / "images"
    out = str(root / "out")
    t = ["--out", out]
    return [
        # --out
        ("--out is an existing file", [*PRETRAIN, "--data", str(images), "--out", str(root / "a_file")]),
        ("--out under a file", [*PRETRAIN, "--data", str(images), "--out", str(root / "a_file" / "run")]),
        ("--out on a read-only place", [*PRETRAIN, "--data", str(images), "--out", "/proc/freelabel-run"]),
        ("--out in a folder that cannot be written", [*PRETRAIN, "--data", str(images), "--out", "/sys/freelabel-run"]),
        (
            "zeroshot --out on a read-only place",
            ["zeroshot", str(images), "--labels", "a,b", "--model", str(run), "--out", "/proc/zs.csv"],
        ),
        ("export --out is a file", ["export", str(run), "--format", "safetensors", "--out", str(root / "a_file")]),
        ("--resume of a folder that is not a run", ["pretrain", "--resume", str(images)]),
        (
            "index build --out is a file",
            ["index", "build", str(images), "--model", str(run), "--out", str(root / "a_file")],
        ),
        (
            "zeroshot --out is a folder",
            ["zeroshot", str(images), "--labels", "a,b", "--model", str(run), "--out", str(root)],
        ),
        ("shards make into a file", ["shards", "make", str(root / "list.csv"), str(root / "a_file")]),
        # --set
        ("--set without =", [*PRETRAIN, "--set", "optim.lr", *t]),
        ("--set with no key", [*PRETRAIN, "--set", "=3", *t]),
        ("--set with a broken key", [*PRETRAIN, "--set", "optim..lr=3", *t]),
        ("--set with unparsable YAML", [*PRETRAIN, "--set", "optim.lr=[", *t]),
        ("--set a section to a number", [*PRETRAIN, "--set", "optim=3", *t]),
        ("--set below a number", [*PRETRAIN, "--set", "optim.lr.x=1", *t]),
        ("--set a word for a number", [*PRETRAIN, "--set", "optim.lr=fast", *t]),
        ("--set a Python object by YAML tag", [*PRETRAIN, "--set", "optim.lr=!!python/object/apply:os.getcwd []", *t]),
        ("--set an unknown key", [*PRETRAIN, "--set", "optim.nope=1", *t]),
        ("--set views.scale of one number", [*PRETRAIN, "--set", "views.scale=[0.5]", *t]),
        ("--set views.mean and std of different lengths", [*PRETRAIN, "--set", "views.mean=[0.5,0.5,0.5]", *t]),
        # budgets
        ("--epochs nan", [*PRETRAIN[:2], "--epochs", "nan", *t]),
        ("--epochs inf", [*PRETRAIN[:2], "--epochs", "inf", *t]),
        ("--minutes inf", [*PRETRAIN[:2], "--minutes", "inf", *t]),
        ("--minutes -1", [*PRETRAIN[:2], "--minutes", "-1", *t]),
        ("--steps 0", [*PRETRAIN[:2], "--steps", "0", *t]),
        ("--steps 1.5", [*PRETRAIN[:2], "--steps", "1.5", *t]),
        ("--lr nan", [*PRETRAIN, "--lr", "nan", *t]),
        ("--lr 0", [*PRETRAIN, "--lr", "0", *t]),
        ("--batch-size 1", [*PRETRAIN, "--batch-size", "1", *t]),
        ("--eval-every 0", [*PRETRAIN, "--eval-every", "0", *t]),
        ("--seed -1", [*PRETRAIN, "--seed", "-1", *t]),
        ("optim.lr=.nan", [*PRETRAIN, "--set", "optim.lr=.nan", *t]),
        ("optim.warmup=1.5", [*PRETRAIN, "--set", "optim.warmup=1.5", *t]),
        ("a method argument of inf", [*PRETRAIN, "--set", "method_args.temperature=.inf", *t]),
        ("a method argument of the wrong type", [*PRETRAIN, "--set", "method_args.temperature=abc", *t]),
        ("a temperature of 0", [*PRETRAIN, "--set", "method_args.temperature=0", *t]),
        ("a negative layer width", [*PRETRAIN, "--set", "method_args.hidden_dim=-4", *t]),
        ("a method option that does not exist", [*PRETRAIN, "--set", "method_args.tau=1", *t]),
        # steps, sizes, workers
        ("checkpoint_every=0", [*PRETRAIN, "--set", "checkpoint_every=0", *t]),
        ("checkpoint_every=-5", [*PRETRAIN, "--set", "checkpoint_every=-5", *t]),
        ("log_every=0", [*PRETRAIN, "--set", "log_every=0", *t]),
        ("log_every=-1", [*PRETRAIN, "--set", "log_every=-1", *t]),
        ("views.size=0", [*PRETRAIN, "--set", "views.size=0", *t]),
        ("views.size=-16", [*PRETRAIN, "--set", "views.size=-16", *t]),
        ("data.workers=-1", [*PRETRAIN, "--set", "data.workers=-1", *t]),
        ("data.image_size=0", [*PRETRAIN, "--set", "data.image_size=0", *t]),
        ("views.hflip=2 (a probability)", [*PRETRAIN, "--set", "views.hflip=2", *t]),
        # hardware
        ("--accelerator tpu", [*PRETRAIN, "--accelerator", "tpu", *t]),
        ("--precision 8-bit", [*PRETRAIN, "--precision", "8-bit", *t]),
        ("--accelerator cuda without a GPU", [*PRETRAIN, "--accelerator", "cuda", *t]),
        ("--devices abc", [*PRETRAIN, "--devices", "abc", *t]),
        ("--devices 0", [*PRETRAIN, "--devices", "0", *t]),
        ("--devices -1", [*PRETRAIN, "--devices", "-1", *t]),
        ("--devices 1.5", [*PRETRAIN, "--devices", "1.5", *t]),
        ("devices=[1,2]", [*PRETRAIN, "--set", "devices=[1,2]", *t]),
        ("seed=1e30", [*PRETRAIN, "--set", "seed=1e30", *t]),
        ("data.workers=abc", [*PRETRAIN, "--set", "data.workers=abc", *t]),
        ("num_nodes=0", [*PRETRAIN, "--set", "num_nodes=0", *t]),
        # -k and other numbers of evaluations and the index
        ("eval knn -k 0", ["eval", "knn", str(run), "-k", "0"]),
        ("eval knn -k -5", ["eval", "knn", str(run), "-k", "-5"]),
        ("eval knn -k abc", ["eval", "knn", str(run), "-k", "abc"]),
        ("eval knn --temperature 0", ["eval", "knn", str(run), "--temperature", "0"]),
        ("eval knn --temperature nan", ["eval", "knn", str(run), "--temperature", "nan"]),
        ("eval knn on an unlabelled run", ["eval", "knn", str(run)]),
        (
            "index build --batch-size 0",
            ["index", "build", str(images), "--model", str(run), "--out", out, "--batch-size", "0"],
        ),
        (
            "index build --batch-size -3",
            ["index", "build", str(images), "--model", str(run), "--out", out, "--batch-size", "-3"],
        ),
        ("index search -k 0", ["index", "search", str(index), "--image", str(images / "0.png"), "-k", "0"]),
        ("index eval -k 0", ["index", "eval", str(index), "-k", "0"]),
        ("index eval -k -1", ["index", "eval", str(index), "-k", "-1"]),
        ("shards make --per-shard 0", ["shards", "make", str(root / "list.csv"), out, "--per-shard", "0"]),
        (
            "segment --box-threshold 2",
            ["segment", str(images / "0.png"), "--segmenter", "x", "--text", "a", "--box-threshold", "2", *t],
        ),
        (
            "segment --batch-size 0",
            ["segment", str(images / "0.png"), "--segmenter", "x", "--text", "a", "--batch-size", "0", *t],
        ),
        # refused files
        ("a recipe with a Python YAML tag", [*PRETRAIN, "--recipe", str(root / "evil.yaml"), *t]),
        ("a run whose config.yaml has a Python YAML tag", ["eval", "knn", str(root / "tagged_run")]),
        ("--resume a run whose checkpoint is a pickle of code", ["pretrain", "--resume", str(root / "evil_run")]),
        ("a recipe that is a list", [*PRETRAIN, "--recipe", str(root / "list.yaml"), *t]),
        ("a recipe that is a YAML alias bomb", [*PRETRAIN, "--recipe", str(root / "laughs.yaml"), *t]),
        # crafted or inconsistent indexes
        *[
            (f"index: {what}", ["index", "search", str(root / f"index_{name}"), "--image", str(images / "0.png")])
            for name, what in CRAFTED.items()
        ],
        # caption lists that escape their folder, or name what is not an image
        *[
            (f"shards make: a list {what}", ["shards", "make", str(root / f"{name}.csv"), out])
            for name, what in ESCAPES.items()
        ],
        *[
            (
                f"pretrain clip: a list {what}",
                ["pretrain", "clip", "--data", str(root / f"{name}.csv"), "--steps", "1", *t],
            )
            for name, what in ESCAPES.items()
        ],
    ]


CRAFTED = {
    "rows": "more rows than vectors",
    "dim": "a dimension that is not the vectors'",
    "nan": "NaN vectors",
    "json": "index.json that is not JSON",
    "list": "index.json that is a list",
    "path": "a row outside the folder",
    "tensor": "embeddings of one dimension",
    "build": "files of two builds",
    "escape": "an embeddings file outside the folder",
    "keys": "a manifest without a model",
    "safetensors": "embeddings that are not safetensors",
}
ESCAPES = {
    "dotdot": "naming ../secret.png",
    "absolute": "naming an absolute path",
    "noext": "naming a file without extension",
    "script": "naming a .py file",
}


def make_fixtures(root: Path) -> None:
    """A folder of 8 images, a 1-step run trained on it (unlabelled), an index of the folder, and the
    crafted and refused files the cases name."""
    from safetensors.torch import load_file, save_file

    from freelabel.cli import main

    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(images / f"{i}.png")
    (root / "a_file").write_text("not a folder")
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert main([*PRETRAIN, "--data", str(images), "--out", str(root / "run")]) == 0
        assert main(["index", "build", str(images), "--model", str(root / "run"), "--out", str(root / "index")]) == 0
    # a run whose training state is a pickle that would call a function when loaded
    evil = root / "evil_run"
    shutil.copytree(root / "run", evil)
    ckpt = sorted((evil / "checkpoints").glob("step-*"))[-1]
    torch.save(_Evil(), ckpt / "state.pt")  # torch's zip format, holding a pickle that calls os.getcwd
    tagged = root / "tagged_run"
    shutil.copytree(root / "run", tagged)
    (tagged / "config.yaml").write_text(
        "method: !!python/object/apply:os.getcwd []\n" + (tagged / "config.yaml").read_text()
    )
    (root / "evil.yaml").write_text("method: simclr\nseed: !!python/object/apply:os.getcwd []\n")
    (root / "list.yaml").write_text("- simclr\n- byol\n")
    laughs = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    laughs += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    (root / "laughs.yaml").write_text("method: simclr\nmethod_args:\n" + "".join(f"  {x}\n" for x in laughs))
    # crafted indexes
    meta = json.loads((root / "index" / "index.json").read_text())
    vectors = load_file(str(root / "index" / meta["embeddings"]))["embeddings"]
    for name in CRAFTED:
        folder = root / f"index_{name}"
        folder.mkdir()
        m, v, text = json.loads(json.dumps(meta)), vectors.clone(), None
        if name == "rows":
            m["rows"] = m["rows"] + m["rows"][:1]
        elif name == "dim":
            m["dim"] = 3
        elif name == "nan":
            v[0, 0] = float("nan")
        elif name == "json":
            text = "{not json"
        elif name == "list":
            text = "[1, 2]"
        elif name == "path":
            m["rows"][0]["path"] = "../../etc/passwd"
        elif name == "tensor":
            v, m["dim"] = v.flatten(), None
        elif name == "keys":
            del m["model"]
        elif name == "escape":
            m["embeddings"] = f"../index/{meta['embeddings']}"
        (folder / "index.json").write_text(text or json.dumps(m))
        build = "other" if name == "build" else meta["build"]
        if name == "safetensors":
            (folder / meta["embeddings"]).write_bytes(b"\xff" * 64)
        else:
            save_file({"embeddings": v.contiguous()}, str(folder / meta["embeddings"]), {"build": build})
    # caption lists
    (root / "list.csv").write_text("image,caption\nimages/0.png,a picture\n")
    outside = {
        "dotdot": "../secret.png",
        "absolute": str(root.parent / "secret.png"),
        "noext": "images/README",
        "script": "images/x.py",
    }
    for name, path in outside.items():
        (root / f"{name}.csv").write_text(f"image,caption\n{path},a caption\n")
    (root.parent / "secret.png").write_bytes((images / "0.png").read_bytes())


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def run_in_process(argv: list[str]) -> tuple[int, str]:
    """Exit status and stderr of ``freelabel ARGV`` run in this process; an uncaught exception is a
    traceback (status 1)."""
    import traceback

    from freelabel.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - what the user would see
            traceback.print_exc(file=err)
            code = 1
    return code, err.getvalue()


def run_command(argv: list[str]) -> tuple[int, str]:
    r = subprocess.run(
        [sys.executable, "-m", "freelabel.cli", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )
    return r.returncode, r.stderr


def table(root: Path, run=run_command) -> str:
    rows = [
        "TINY: " + " ".join(PRETRAIN[2:]) + "; $T: the fixtures' folder",
        "",
        "| case | command (after `freelabel`) | exit | stderr |",
        "|---|---|---|---|",
    ]
    for what, argv in cases(root):
        code, err = run(argv)
        shown = " ".join(a.replace(str(root), "$T") for a in argv).replace(" ".join(PRETRAIN), "pretrain simclr TINY")
        line = " / ".join(err.strip().splitlines()).replace(str(root), "$T").replace("|", "\\|")
        rows.append(f"| {what} | `{shown}` | {code} | {line} |")
    return "\n".join(rows)


if __name__ == "__main__":  # --in-process: one interpreter for all cases (fast); default: a command per case
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "t"
        make_fixtures(root)
        print(table(root, run_in_process if "--in-process" in sys.argv else run_command))
