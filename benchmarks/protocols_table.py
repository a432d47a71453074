"""The protocols table: each method's 10-minute Fashion-MNIST run scored by k-NN, the linear probe and
fine-tuning on 1%, 10% and 100% of the labels, next to the same backbone at random initialisation, with
the supervised-from-scratch reference, as the mean and spread of 3 seeds with the CPU named.

For every method and seed: ``freelabel pretrain METHOD`` with its ``METHOD-fashion-mnist`` recipe for
``--minutes``; k-NN (k=20) and the linear probe of the trained backbone, of the same backbone at its
random initialisation and of raw pixels; fine-tuning of the trained backbone for ``--finetune-minutes``
on each label fraction (the subset seeded like the run); and the supervised-from-scratch reference: the
same backbone from its random initialisation, on the same labels, for the pretraining plus fine-tuning
minutes (an equal total budget). Runs already in ``--out`` are reused, so an interrupted table resumes.

    python benchmarks/protocols_table.py --minutes 10 --finetune-minutes 10 --out runs/protocols
    python benchmarks/protocols_table.py --minutes 0.2 --finetune-minutes 0.1 --seeds 0 --methods simclr,mae \\
        --data /tmp/small-folder --out /tmp/table   # a check that it runs end to end
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from freelabel.config import load_recipe, resolve
from freelabel.engine import pretrain
from freelabel.evaluate.finetune import finetune
from freelabel.evaluate.knn import evaluate_knn
from freelabel.evaluate.linear import evaluate_linear
from freelabel.hardware import cpu_description


def run_one(method: str, seed: int, args: argparse.Namespace) -> dict:
    """Every cell of one method and seed (the run and its scores are kept in ``--out``)."""
    run = Path(args.out) / f"{method}-seed{seed}"
    overrides = {"budget.minutes": args.minutes, "seed": seed}
    if args.data:
        overrides |= {"data.name": args.data, "data.image_size": 28}
    if not (run / "backbone.safetensors").is_file():
        pretrain(resolve(load_recipe(f"{method}-fashion-mnist"), {"method": method, **overrides}), run)
    knn = evaluate_knn(run, baselines=True, ks=(20,))
    linear = evaluate_linear(run, baselines=True, seed=seed)
    cells = {
        "knn": {k: knn[k]["top1_k20"] for k in ("trained", "random_init", "raw_pixels")},
        "linear": {k: linear[k]["top1"] for k in ("trained", "random_init", "raw_pixels")},
    }
    for labels in args.labels:
        tuned = finetune(run, labels=labels, minutes=args.finetune_minutes, seed=seed)
        scratch = finetune(run, labels=labels, init="random", minutes=args.minutes + args.finetune_minutes, seed=seed)
        cells[f"finetune {labels}"] = {"trained": tuned["top1"], "random_init": scratch["top1"]}
    return cells


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(results: dict, methods: list[str], columns: list[str]) -> str:
    """Markdown: per method, the trained backbone and the same backbone at random initialisation (for the
    fine-tuning columns: trained from scratch on the same labels for the total budget); raw pixels last."""
    lines = ["| backbone | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    for method in methods:
        for row, name in (("trained", method), ("random_init", f"{method}: random init / supervised from scratch")):
            cells = [spread([seed[c][row] for seed in results[method] if row in seed.get(c, {})]) for c in columns]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    seeds = results[methods[0]]  # raw pixels are the same for every method: one value per seed
    pixels = [spread([s[c]["raw_pixels"] for s in seeds if "raw_pixels" in s.get(c, {})]) for c in columns]
    lines.append("| raw pixels | " + " | ".join(pixels) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="simclr,dino,mae,ijepa")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--minutes", type=float, default=10.0, help="pretraining budget of each run")
    p.add_argument("--finetune-minutes", type=float, default=10.0, help="fine-tuning budget of each trained backbone")
    p.add_argument("--labels", default="1%,10%,100%", help="label fractions (or numbers per class) to fine-tune on")
    p.add_argument("--data", help="a labelled folder instead of Fashion-MNIST (for a quick check)")
    p.add_argument("--out", default="runs/protocols")
    args = p.parse_args()
    methods, seeds = args.methods.split(","), [int(s) for s in args.seeds.split(",")]
    args.labels = args.labels.split(",")
    results = {m: [run_one(m, s, args) for s in seeds] for m in methods}
    columns = ["knn", "linear"] + [f"finetune {labels}" for labels in args.labels]
    header = (
        f"Fashion-MNIST{' (' + args.data + ')' if args.data else ''}: {args.minutes:g}-minute runs, fine-tuning "
        f"{args.finetune_minutes:g} minutes (from scratch: {args.minutes + args.finetune_minutes:g}), top-1 %, "
        f"mean ± std over seeds {args.seeds}; CPU: {cpu_description()}"
    )
    text = header + "\n\n" + table(results, methods, columns)
    print(text)
    Path(args.out, "protocols_table.md").write_text(text + "\n")
    Path(args.out, "protocols_table.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
