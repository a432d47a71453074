"""Which 1% of the labels to ask for: `freelabel curate --select N` (the image nearest each centre of an
N-centre k-means over the run's embeddings) against a seeded random 1% per class, each fine-tuned from
the same SSL run with the same budget, over 3 seeds; the mean and spread of test top-1.

    freelabel pretrain simclr --data fashion-mnist --minutes 10 --out runs/simclr
    OMP_WAIT_POLICY=PASSIVE python benchmarks/select_vs_random.py runs/simclr
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from freelabel.evaluate.finetune import finetune
from freelabel.hardware import cpu_description
from freelabel.pipelines.curate import curate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="an SSL run directory trained on --data")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--fraction", type=float, default=0.01)
    p.add_argument("--train-size", type=int, default=60_000)
    p.add_argument(
        "--epochs", type=float, help="fine-tuning epochs (default: fine-tuning's own, 10 and at least 500 steps)"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="/tmp/select_vs_random")
    args = p.parse_args()
    out = Path(args.out)
    n = round(args.fraction * args.train_size)
    acc: dict[str, list[float]] = {"select": [], "random": []}
    for seed in args.seeds:
        chosen = out / f"select-{seed}.txt"
        curate(args.data, args.run, chosen, n_select=n, threshold=1.0, seed=seed)  # no duplicate removal
        for how, kw in (("select", {"subset_file": chosen}), ("random", {"labels": f"{100 * args.fraction:g}%"})):
            r = finetune(args.run, args.data, epochs=args.epochs, seed=seed, out=out / f"{how}-{seed}", **kw)
            acc[how].append(r["top1"])
            print(f"seed {seed} {how}: {r['train_images']} labelled images, top-1 {r['top1']:.2f}", flush=True)
    budget = f"{args.epochs:g} epochs" if args.epochs else "fine-tuning's default budget"
    print(f"\nfine-tuning {args.run} on {n} labelled images of {args.data}, {budget}; CPU: {cpu_description()}")
    print("| labels chosen by | top-1 (mean ± std over seeds " + ", ".join(map(str, args.seeds)) + ") |")
    print("| --- | --- |")
    for how, values in acc.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {how} | {statistics.mean(values):.2f} ± {spread:.2f} ({', '.join(f'{v:.2f}' for v in values)}) |")


if __name__ == "__main__":
    main()
