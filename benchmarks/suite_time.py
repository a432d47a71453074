"""How long the test suite takes: ``make check`` and ``make test`` in a clean clone of this checkout's
HEAD, set-up excluded (the clone uses this checkout's virtual environment), on a quiet machine.

    python benchmarks/suite_time.py [--record results/suite.jsonl]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(target: str, clone: Path) -> tuple[float, str]:
    """Minutes of ``make TARGET`` in ``clone``, and pytest's last line."""
    env = {**os.environ, "PYTHONPATH": str(clone / "src")}  # the clone's code, with this checkout's packages
    venv = ROOT / ".venv"
    start = time.perf_counter()
    done = subprocess.run(  # -o: the environment counts as set up (the clone's files are newer than it)
        ["make", "-o", f"{venv}/.installed", target, f"VENV={venv}"], cwd=clone, env=env, capture_output=True, text=True
    )
    minutes = (time.perf_counter() - start) / 60
    last = next((line for line in reversed(done.stdout.splitlines()) if re.search(r"passed|failed", line)), "")
    if done.returncode:
        raise SystemExit(f"make {target} failed: {last or done.stderr[-2000:]}")
    return minutes, last.strip("= ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", type=Path, help="append the figures to this results file")
    args = ap.parse_args()
    from freelabel.hardware import cpu_description

    print(cpu_description(), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True)
        for target in ("check", "test"):
            minutes, said = timed(target, clone)
            print(f"make {target}: {minutes:.2f} min ({said})", flush=True)
            rows.append({"measured": f"`make {target}` ({said})", "metric": "time", "value": minutes, "unit": "min"})
    if args.record:
        from freelabel.results import record

        source = f"suite_time.py at {commit.stdout.strip()}, {time.strftime('%Y-%m-%dT%H:%M:%S')}"
        record(args.record, [{"table": "suite", "source": source, **r} for r in rows])


if __name__ == "__main__":
    main()
