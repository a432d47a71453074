"""The CLI answers at once: help, listings and argument errors import none of the heavy libraries
(held as a bound on the modules imported, not as a timing)."""

import subprocess
import sys

import pytest

HEAVY = ("lightning", "timm", "transformers", "torch.utils.tensorboard")
PROBE = """
import sys
from freelabel.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("\\nMODULES " + " ".join(sorted(sys.modules)))
"""


def imported(*args: str) -> set[str]:
    r = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=300)
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("MODULES "), r.stdout + r.stderr
    return set(last.split()[1:])


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["methods"],
        ["backbones"],
        ["recipes"],
        ["pretrain"],
        ["pretrain", "no-such-method"],
        ["pretrain", "simclr", "--set", "optim.lr=fast"],
        ["eval", "knn", "--no-such-flag"],
    ],
)
def test_help_listings_and_errors_import_not_even_torch(args):
    loaded = imported(*args)
    assert "freelabel.cli" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("torch", *HEAVY)}
