"""Recipe sweeps: what each setting of a method's CPU recipe buys at a budget of minutes.

    python benchmarks/recipe_sweep.py METHOD --minutes 2 --point "" --point "optim.lr=2e-3 optim.batch_size=128" \
        [--recipe RECIPE] [--data fashion-mnist] [--seeds 0] [--out runs/sweeps] [--record results/sweeps.jsonl]

    for each point (--set overrides on the recipe, "" for the recipe as it is) and seed:
        if the results file holds that point: skip it                  # a sweep goes on over several sittings
        freelabel compare METHOD --set POINT --minutes M --seed S       # k-NN on the whole splits, linear probe
        its scores, steps and images/s as rows of table "sweep", with the point

Run it alone on a quiet machine: the budget is in minutes, so a loaded CPU trains fewer steps.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from freelabel.compare import compare, plan, result_rows
from freelabel.config import default_recipe, parse_override
from freelabel.evaluate import compared
from freelabel.results import read, record


def slug(point: str) -> str:
    """A folder name for a point: ``optim.lr=2e-3 optim.batch_size=128`` -> ``lr-2e-3_batch_size-128``."""
    parts = [re.sub(r"[^A-Za-z0-9.+-]+", "-", f"{k.rsplit('.', 1)[-1]}-{v}") for k, v in map(_pair, point.split())]
    return "_".join(parts) or "recipe"


def _pair(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key, value


def held(path: Path, method: str, recipe: str, budget: str, data: str, point: str, seed: int) -> bool:
    """Whether the results file already holds this point's scores."""
    rows = read(path.parent) if path.parent.is_dir() else []
    want = (method, recipe, budget, data, point, seed)
    return any(
        r.get("table") == "sweep" and (r["method"], r["recipe"], r["budget"], r["data"], r["set"], r["seed"]) == want
        for r in rows
    )


def sweep(
    method: str, points: list[str], minutes: float, data: str, recipe: str, seeds: list[int], out: Path, path: Path
) -> None:
    budget = f"{minutes:g} minutes"
    for point in points:
        overrides = dict(parse_override(s) for s in point.split())
        for seed in seeds:
            if held(path, method, recipe, budget, data, point, seed):
                logging.info("%s %r seed %d: recorded earlier", method, point, seed)
                continue
            where = out / method / budget.replace(" ", "") / f"{slug(point)}-seed{seed}"
            spec = [f"{method}:{recipe}"]
            compare(spec, data, where, minutes=minutes, seed=seed, overrides=overrides)
            (entry,) = plan(spec, data, {"minutes": minutes, "steps": None, "epochs": None}, seed, None, overrides)
            rows = result_rows(where / entry.name, entry, None, compared())
            added = record(path, [r | {"table": "sweep", "set": point} for r in rows])
            logging.info("%s %r seed %d: %d rows added to %s", method, point, seed, added, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("method")
    p.add_argument("--point", action="append", required=True, help='space-separated KEY=VALUE overrides; "" for none')
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--recipe", help="default: the method's recipe for --data")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", type=Path, default=Path("runs/sweeps"))
    p.add_argument("--record", type=Path, default=Path("results/sweeps.jsonl"))
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    recipe = a.recipe or default_recipe(a.method, a.data)
    sweep(a.method, a.point, a.minutes, a.data, recipe, a.seeds, a.out, a.record)


if __name__ == "__main__":
    main()
