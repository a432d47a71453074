import subprocess
import sys

import pytest
from bad_flags import run_in_process

from freelabel.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "freelabel.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args, says",
    [
        (["pretrain", "simclrr"], "unknown method 'simclrr'; valid: simclr"),
        (
            ["pretrain", "simclr", "--backbone", "resnet9000", "--steps", "1"],
            "unknown backbone 'resnet9000'; valid: convnet",
        ),
        (
            ["pretrain", "simclr", "--data", "imagenet-42", "--steps", "1"],
            "unknown dataset 'imagenet-42'; valid: fashion-mnist",
        ),
        (["pretrain", "simclr", "--set", "optim.lr=fast", "--steps", "1"], "optim.lr must be a number"),
        (["pretrain", "simclr", "--set", "optim.nope=1", "--steps", "1"], "unknown key optim.nope; valid: name, lr"),
        (["pretrain", "simclr", "--set", "method_args.tau=1", "--steps", "1"], "simclr has no option 'tau'; valid:"),
        (["pretrain", "simclr", "--steps", "0"], "--steps must be positive"),
        (["pretrain", "simclr", "--recipe", "nope", "--steps", "1"], "unknown recipe 'nope'; valid:"),
        (
            ["pretrain", "dinov2", "--backbone", "convnet", "--steps", "1"],
            "backbone 'convnet' does not take the arguments ['depth', 'patch_size']",
        ),
        (["eval", "knn", "/nonexistent/run"], "no such run directory or model folder: /nonexistent/run"),
    ],
)
def test_bad_input_is_one_line_exit_2_no_traceback(args, says, tmp_path):
    code, err = run_in_process([*args, "--out", str(tmp_path / "run")] if args[0] == "pretrain" else args)
    assert code == 2, err
    assert says in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # each case starts a fresh interpreter
@pytest.mark.parametrize(
    "args, says",
    [
        (["pretrain", "simclrr"], "unknown method 'simclrr'; valid: simclr"),  # before torch is loaded
        (["pretrain", "simclr", "--set", "method_args.tau=1", "--steps", "1"], "simclr has no option 'tau'; valid:"),
    ],
)
def test_the_program_says_bad_input_in_one_line(args, says, tmp_path):
    """As a user's shell sees it: the program's whole stderr, logging set up as the command sets it."""
    r = run_cli(*args, "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_listings_and_help(capsys):
    assert main(["methods"]) == 0
    assert "simclr" in capsys.readouterr().out
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    assert "convnet" in out and "resnet18" in out and "vit_small" in out and "timm:NAME" in out
    assert main(["recipes"]) == 0
    assert "simclr-fashion-mnist" in capsys.readouterr().out
    for cmd in (["--help"], ["pretrain", "--help"], ["eval", "knn", "--help"]):
        assert main(cmd) == 0
    assert "--minutes" in capsys.readouterr().out
