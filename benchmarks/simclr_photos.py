"""SimCLR on a folder of colour photos at 64 px, before and after crops from the whole image.

The folder is the emoji set as real-size JPEGs (``photo_folders.emoji_jpegs``: 96-400 px, aspect
1:2 to 2:1, the emoji anywhere on the canvas; one sub-folder per category). Both runs train the same
recipe (SimCLR's CPU recipe at 64 px, written to a YAML file) for the same minutes:

- ``before``: the code at ``--before`` (default: the commit before the crop change), where each file
  is shrunk to its centre 64-px square and the views are cut from that;
- ``after``: this tree, where each view is cropped from the whole decoded image.

Then ``freelabel eval knn --baselines`` on the folder's held-out fifth: the trained backbone against
its random initialisation and raw pixels. One command:

    python benchmarks/simclr_photos.py --minutes 10 [--work /tmp/simclr-photos]

(``--minutes 0.2`` checks the whole thing in a few minutes.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from photo_folders import emoji_jpegs

BEFORE = "c198f50"  # main before issue 17's crops
ROOT = Path(__file__).resolve().parents[1]


def source_tree(commit: str, work: Path) -> Path:
    """The source of ``commit`` (``git archive``, unpacked) to run the 'before' code from."""
    tree = work / f"freelabel-{commit}"
    if not (tree / "src").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "src"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def train_and_score(label: str, src: Path, folder: Path, recipe: Path, minutes: float, work: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src / "src"), OMP_WAIT_POLICY="PASSIVE")
    run = work / f"run-{label}-{minutes:g}min"
    cli = [sys.executable, "-m", "freelabel.cli"]
    if not (run / "backbone.safetensors").is_file():
        subprocess.run(
            [
                *cli,
                "pretrain",
                "simclr",
                "--data",
                str(folder),
                "--recipe",
                str(recipe),
                "--minutes",
                str(minutes),
                "--out",
                str(run),
            ],
            env=env,
            check=True,
        )
    subprocess.run([*cli, "eval", "knn", str(run), "--baselines"], env=env, check=True)
    metrics = json.loads((run / "metrics.json").read_text())
    return {
        "images_per_s": round(metrics["pretrain"]["images_per_s"], 1),
        "steps": metrics["pretrain"]["steps"],
        **{k: metrics["knn"][k] for k in ("trained", "random_init", "raw_pixels")},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="training minutes of each run")
    p.add_argument("--work", default="/tmp/simclr-photos", help="folder for the JPEGs, the runs and the results")
    p.add_argument("--before", default=BEFORE, help="commit of the code before the crop change")
    p.add_argument("--size", type=int, default=64, help="view size in pixels")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    folder = emoji_jpegs(work / "emoji-jpegs")
    sys.path.insert(0, str(ROOT / "src"))
    from freelabel.config import cpu_recipe

    recipe = cpu_recipe("simclr")[1]
    recipe["views"]["size"] = args.size
    recipe.pop("about")
    recipe_file = work / "simclr-photos.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe, sort_keys=False))
    results = {
        "minutes": args.minutes,
        "size": args.size,
        "folder": str(folder),
        "before": train_and_score("before", source_tree(args.before, work), folder, recipe_file, args.minutes, work),
        "after": train_and_score("after", ROOT, folder, recipe_file, args.minutes, work),
    }
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"SimCLR, {args.minutes:g} min at {args.size} px on {folder} (k-NN top-1 %, k=20 / 200):")
    for label in ("before", "after"):
        r = results[label]
        row = "  ".join(
            f"{k} {r[k]['top1_k20']:.1f} / {r[k]['top1_k200']:.1f}" for k in ("trained", "random_init", "raw_pixels")
        )
        print(f"  {label:6s} {r['images_per_s']:6.1f} images/s  {row}")


if __name__ == "__main__":
    main()
