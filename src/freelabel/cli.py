"""The ``freelabel`` command: a thin layer over the library; each sub-command calls one function."""

from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import sys
import time
from pathlib import Path

# OpenMP threads that sleep as soon as their work ends: about as fast on an idle machine, and when a data loader's
# workers or another job share the cores, 1.6x faster than spinning (measured on 2 cores; docs/performance.md).
# Set before torch loads OpenMP; an OMP_WAIT_POLICY of the user's own is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

EXAMPLES = """examples:
  freelabel pretrain simclr --data fashion-mnist --minutes 10 --out runs/x
  freelabel eval knn runs/x --baselines
  freelabel report runs/x
  freelabel compare simclr byol dino --data fashion-mnist --minutes 10 --out runs/compare
  freelabel pretrain --resume runs/x
  freelabel export runs/x --format transformers
  freelabel pretrain simclr --data ~/photos --backbone resnet18 --set views.size=96 --epochs 100
  freelabel segment photo.jpg --text "cat,dog" --detector IDEA-Research/grounding-dino-tiny --segmenter facebook/sam-vit-base --out seg
"""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (and exit status 2), like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, low: float, *, strict: bool = True, high: float | None = None):
    """An argparse type: a finite ``kind`` above ``low`` (or at least ``low`` when not ``strict``), at most ``high``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{'an integer' if kind is int else 'a number'} is needed, got {text!r}"
            ) from None
        if not math.isfinite(value) or value < low or (strict and value == low) or (high is not None and value > high):
            bound = f"{'above' if strict else 'at least'} {low:g}" + (
                f" and at most {high:g}" if high is not None else ""
            )
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE_INT, POSITIVE, FRACTION = _number(int, 0), _number(float, 0), _number(float, 0, strict=False, high=1)


def _labels(text: str) -> str:
    """An argparse type: labels to fine-tune on (:func:`freelabel.config.parse_labels`), kept as written."""
    from .config import parse_labels
    from .errors import ConfigError

    try:
        parse_labels(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--labels takes ")) from None
    return text


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="freelabel",
        description="Learn visual representations without labels.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pt = sub.add_parser(
        "pretrain",
        help="pretrain a backbone without labels",
        description="Pretrain a backbone with a self-supervised METHOD. The recipe gives every "
        "setting; the flags below and --set override it.",
    )
    pt.add_argument("method", nargs="?", help="method name (see `freelabel methods`); omit with --resume")
    pt.add_argument(
        "--data",
        help="fashion-mnist (default), emoji, or a folder of images (class sub-folders or flat); "
        "clip/siglip: emoji-captions, a CSV/JSONL of image,caption, a folder with .txt captions, or .tar shards",
    )
    pt.add_argument(
        "--recipe",
        help="recipe name (see `freelabel recipes`) or YAML file; "
        "default: METHOD-DATA if it exists, else the method's paper recipe",
    )
    pt.add_argument("--backbone", help="backbone name (see `freelabel backbones`)")
    budget = pt.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=float, help="training budget in epochs")
    budget.add_argument("--steps", type=int, help="training budget in optimiser steps")
    budget.add_argument("--minutes", type=float, help="training budget in minutes of training")
    pt.add_argument("--batch-size", type=int, help="images per process per step")
    pt.add_argument("--lr", type=float, help="peak learning rate for a global batch of 256 (scaled linearly)")
    pt.add_argument("--seed", type=int)
    pt.add_argument("--accelerator", help="cpu, cuda, mps or auto")
    pt.add_argument("--devices", help="number of devices (processes), or auto")
    pt.add_argument("--num-nodes", type=int, help="number of machines, each running --devices processes (torchrun)")
    pt.add_argument("--strategy", choices=["ddp", "fsdp"], help="ddp (a whole copy per device) or fsdp (sharded)")
    pt.add_argument("--precision", help="auto, 32-true, bf16-mixed, 16-mixed")
    pt.add_argument("--eval-every", type=float, metavar="MINUTES", help="online k-NN every MINUTES of training")
    pt.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any recipe key, e.g. --set optim.weight_decay=1e-5 (repeatable)",
    )
    pt.add_argument("--out", help="run directory (default: runs/METHOD-DATA-TIME)")
    pt.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest checkpoint")
    pt.add_argument(
        "--allow-outside", action="store_true", help="let a CSV/JSONL caption list name images outside its own folder"
    )

    ev = sub.add_parser("eval", help="evaluate a run's backbone or a pretrained model by a protocol")
    _protocol_parsers(ev.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL"))

    pr = sub.add_parser("predict", help="apply a classifier folder (from eval linear/finetune) to a folder of images")
    pr.add_argument("classifier", help="classifier folder")
    pr.add_argument("images", help="folder of images (searched recursively)")
    pr.add_argument("--out", help="CSV to write (image, label_1, score_1, ...); default: print it")
    pr.add_argument("-k", type=POSITIVE_INT, default=5, help="labels per image")

    zs = sub.add_parser("zeroshot", help="classify a folder of images by class names, zero-shot")
    zs.add_argument("images", help="folder of images")
    zs.add_argument("--labels", required=True, help='class names, comma-separated: "cat,dog,bird"')
    zs.add_argument(
        "--model", required=True, help="clip/siglip run directory, or a pretrained model (hub name or local folder)"
    )
    zs.add_argument(
        "--weights",
        help="weights file for a torchvision:NAME model (a state dict) or a run (a .safetensors file or checkpoint folder)",
    )
    zs.add_argument("--out", help="CSV to write (image, label, score); default: print it")

    sh = sub.add_parser("shards", help="WebDataset shards of images (labels, captions), streamed in training")
    shsub = sh.add_subparsers(dest="action", required=True, metavar="ACTION")
    mk = shsub.add_parser(
        "make",
        help="write shards from an image folder (class sub-folders become labels), a "
        "CSV/JSONL of image,caption or a folder with .txt captions",
    )
    mk.add_argument("src", help="image folder, CSV/JSONL file or captioned folder")
    mk.add_argument("out", help="folder for shard-000000.tar, ... and shards.json")
    mk.add_argument("--per-shard", type=POSITIVE_INT, default=1000, help="samples per shard")
    mk.add_argument("--workers", type=POSITIVE_INT, help="processes writing shards (default: the cores available)")
    mk.add_argument(
        "--allow-outside", action="store_true", help="let a caption list name images outside its own folder"
    )

    ix = sub.add_parser("index", help="an embedding index of images: build, search, evaluate")
    ixsub = ix.add_subparsers(dest="action", required=True, metavar="ACTION")
    b = ixsub.add_parser("build", help="create or update an index (only new or changed images are embedded)")
    b.add_argument("source", help="a folder of images, or fashion-mnist / emoji (its --split)")
    b.add_argument("--model", required=True, help="run directory, hub name, model folder or torchvision:NAME")
    b.add_argument(
        "--weights",
        help="weights file for a torchvision:NAME model (a state dict) or a run (a .safetensors file or checkpoint folder)",
    )
    b.add_argument("--out", required=True, help="index folder")
    b.add_argument("--split", default="test", help="split of an embedded data set (default: test)")
    b.add_argument("--batch-size", type=POSITIVE_INT, default=64)
    s = ixsub.add_parser("search", help="top-k images by similarity to an image or (image-text models) a text")
    s.add_argument("index", help="index folder")
    query = s.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", help="query image file")
    query.add_argument("--text", help="query text (CLIP/SigLIP indexes)")
    s.add_argument("-k", type=POSITIVE_INT, default=10, help="number of results")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e = ixsub.add_parser("eval", help="image-to-image precision@k by class (each image queries the rest)")
    e.add_argument("index", help="index folder")
    e.add_argument("-k", type=POSITIVE_INT, default=10)
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")

    cu = sub.add_parser(
        "curate", help="drop near-duplicates, balance clusters, pick images to label: a file list for --data"
    )
    cu.add_argument("source", help="a folder of images, fashion-mnist / emoji (its --split), or an index (no --model)")
    cu.add_argument("--model", help="run directory, hub name, model folder or torchvision:NAME")
    cu.add_argument(
        "--weights",
        help="weights file for a torchvision:NAME model (a state dict) or a run (a .safetensors file or checkpoint folder)",
    )
    cu.add_argument("--out", required=True, help="file list to write (.txt), with the report beside it (.json)")
    cu.add_argument("--split", default="train", help="split of an embedded data set (default: train)")
    cu.add_argument(
        "--threshold",
        type=FRACTION,
        default=0.7,
        help="cosine similarity of the embeddings from which two images are candidate near-duplicates (default 0.7)",
    )
    cu.add_argument(
        "--pixel-threshold",
        type=FRACTION,
        default=0.99,
        help="correlation of their grey thumbnails, at the best shift of up to 3 of 32 pixels, that confirms a "
        "candidate pair (default 0.99; 0: the embeddings decide alone)",
    )
    cu.add_argument(
        "--clusters",
        type=_number(int, 0, strict=False),
        default=0,
        help="balance over this many k-means clusters (default: no balancing)",
    )
    cu.add_argument(
        "--per-cluster", type=POSITIVE_INT, help="images kept per cluster (default: the median cluster size)"
    )
    cu.add_argument(
        "--select",
        type=POSITIVE_INT,
        metavar="N",
        help="keep the N images that best cover the embeddings (to label first)",
    )
    cu.add_argument("--seed", type=int, default=0)

    ex = sub.add_parser(
        "export",
        help="export a run's backbone for transformers, timm or freelabel",
        description="Write a folder that loads outside freelabel and gives the run's features "
        "(checked to 1e-4 before it is kept): transformers (AutoModel.from_pretrained), timm "
        "(timm.create_model; the call is in the folder's README.md), onnx (onnxruntime, dynamic batch), "
        "or safetensors (bare weights + config.yaml, loaded by freelabel.methods.load_backbone).",
    )
    ex.add_argument("run", help="run directory")
    ex.add_argument("--format", required=True, choices=["transformers", "timm", "onnx", "safetensors"])
    ex.add_argument("--weights", help="export these weights of the run (a .safetensors file or checkpoint folder)")
    ex.add_argument("--out", help="export folder (default: RUN/export-FORMAT)")

    sg = sub.add_parser(
        "segment",
        help="segment images by text phrases, points or boxes",
        description="Segment IMAGEs and write NAME.json (boxes, scores, labels, masks as COCO RLE) and "
        "NAME.png (overlay) per image into --out. By text: --text with --detector (Grounding DINO or "
        "OWLv2) and a SAM/SAM2 --segmenter, or a SAM3 --segmenter alone. By prompts: --points and/or "
        "--boxes with a SAM/SAM2 --segmenter. Models are hub names or save_pretrained folders.",
    )
    sg.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or with --coco also folders of images")
    sg.add_argument("--text", help='comma-separated phrases, e.g. "cat,dog"')
    sg.add_argument("--detector", help="Grounding DINO or OWLv2 model turning --text into boxes")
    sg.add_argument("--segmenter", required=True, help="SAM, SAM2 or SAM3 model")
    sg.add_argument(
        "--points", nargs="+", metavar="X,Y[,LABEL]", help="prompt points; LABEL 1 foreground (default), 0 background"
    )
    sg.add_argument("--boxes", nargs="+", metavar="X0,Y0,X1,Y1", help="prompt boxes, one object each")
    sg.add_argument(
        "--box-threshold", type=FRACTION, default=0.3, help="keep detections (or SAM3 instances) scoring above this"
    )
    sg.add_argument(
        "--text-threshold", type=FRACTION, default=0.25, help="Grounding DINO: a phrase's token score to label a box"
    )
    sg.add_argument("--nms", type=FRACTION, default=0.5, metavar="IOU", help="per-label NMS IoU threshold")
    sg.add_argument("--batch-size", type=POSITIVE_INT, default=4, help="images per detector forward pass")
    sg.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    sg.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="default: bf16 on GPU, fp32 on CPU")
    sg.add_argument("--out", help="output folder (a JSON and an overlay PNG per image)")
    sg.add_argument(
        "--coco",
        metavar="FILE",
        help="instead: one COCO instances file for all the images (by --text), "
        "resumable: a rerun continues where a stopped one left off",
    )

    rp = sub.add_parser(
        "report",
        help="an HTML report of a run (or of a pretrained model with --model)",
        description="Write RUN/report.html (or OUT/report.html for --model): one self-contained file "
        "with the results, curves, a t-SNE map of test features, nearest neighbours and the method's "
        "pictures; it opens from disk and makes no network requests.",
    )
    rp.add_argument("run", nargs="?", help="run directory (or --model)")
    rp.add_argument("--model", help="a pretrained model instead of a run: hub name, local folder or torchvision:NAME")
    rp.add_argument("--data", default="fashion-mnist", help="--model only: labelled data to show it on")
    rp.add_argument("--out", help="--model only: folder for report.html")
    rp.add_argument("--train-images", type=int, default=10_000, help="training images searched for neighbours")
    rp.add_argument("--test-images", type=int, default=2000, help="test images on the map")

    cp = sub.add_parser(
        "compare",
        help="train several methods at the same budget and write a leaderboard",
        description="Train each METHOD (with its recipe for the data, or METHOD:RECIPE) at the same "
        "budget, seed and data order, one after another, score each with k-NN and the linear probe (and fine-tuning with --finetune), and write OUT/leaderboard"
        ".md, .csv and .html. Run it again to continue: finished methods are not run again.",
    )
    cp.add_argument("methods", nargs="+", metavar="METHOD[:RECIPE]", help="or `all`: every recipe made for --data")
    cp.add_argument("--data", default="fashion-mnist", help="data for every method (default: fashion-mnist)")
    cbudget = cp.add_mutually_exclusive_group(required=True)
    cbudget.add_argument("--minutes", type=float, help="training minutes per method")
    cbudget.add_argument("--steps", type=int, help="optimiser steps per method")
    cbudget.add_argument("--epochs", type=float, help="epochs per method")
    cp.add_argument("--seed", type=int, default=0)
    cp.add_argument(
        "--eval-every", type=float, metavar="MINUTES", help="online k-NN interval (default: a fifth of --minutes)"
    )
    cp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key in every recipe")
    cp.add_argument(
        "--finetune",
        metavar="LABELS",
        type=_labels,
        help="also fine-tune each run on LABELS of the training labels (1%%, 10%%, 100%% or a number per class)",
    )
    cp.add_argument("--out", required=True, help="folder for the runs and the leaderboard")
    cp.add_argument(
        "--record",
        metavar="FILE",
        help="append each finished method's scores to this results file (results/leaderboard.jsonl; rows are "
        "never added twice), for `freelabel results` to render",
    )

    rs = sub.add_parser(
        "results",
        help="render docs/results.md and the README's results table from the rows in results/",
        description="Render the tables of docs/results.md and the README's headline table from results/*.jsonl "
        "(rows that compare --record and the benchmarks append).",
    )
    rs.add_argument("--check", action="store_true", help="change nothing; exit 1 naming each stale file")
    rs.add_argument("--root", default=".", help="the repository (default: here)")

    sub.add_parser("methods", help="list the methods")
    sub.add_parser("backbones", help="list the backbones")
    sub.add_parser("recipes", help="list the recipes")
    return p


TYPES = {"int": int, "float": float, "positive": POSITIVE, "positive_int": POSITIVE_INT, "fraction": FRACTION}


def _protocol_parsers(evsub) -> None:
    """A sub-command per protocol of :data:`freelabel.evaluate.PROTOCOLS`, with the options its line names,
    and ``all``: the protocols ``compare`` scores with, as it scores."""
    from .evaluate import PROTOCOLS, Protocol, compared

    everything = Protocol("", "", f"{', '.join(compared())}, as compare scores a run: one extraction shared")
    for name, protocol in {**PROTOCOLS, "all": everything}.items():
        p = evsub.add_parser(name, help=protocol.help)
        p.add_argument(
            "run", nargs="?", help="run directory, or a pretrained model: hub name, local folder or torchvision:NAME"
        )
        p.add_argument(
            "--model", help="a pretrained model instead of a run: hub name, local folder or torchvision:NAME"
        )
        p.add_argument("--data", help=protocol.data)
        groups: dict = {}
        for o in protocol.options:
            kwargs = {"dest": o.dest, "help": o.help, "action": o.action, "nargs": o.nargs, "choices": o.choices}
            kwargs |= {"type": _labels if o.type == "labels" else TYPES[o.type]} if o.type else {}
            kwargs |= {"const": o.const} if o.action == "store_const" else {"default": o.default}
            if o.group and o.group not in groups:
                groups[o.group] = p.add_mutually_exclusive_group()
            into = groups[o.group] if o.group else p
            into.add_argument(*o.flags, **{k: v for k, v in kwargs.items() if v is not None or k == "default"})


def _overrides(args: argparse.Namespace) -> dict:
    from .config import parse_override

    o: dict = {}
    if args.data:
        o["data.name"] = args.data
    if args.backbone:
        o["backbone.name"] = args.backbone
    if any(v is not None for v in (args.epochs, args.steps, args.minutes)):
        o.update({"budget.epochs": args.epochs, "budget.steps": args.steps, "budget.minutes": args.minutes})
    if args.devices is not None:
        o["devices"] = int(args.devices) if args.devices.strip().isdigit() else args.devices
    if args.allow_outside:
        o["data.allow_outside"] = True
    for flag, key in [
        ("batch_size", "optim.batch_size"),
        ("lr", "optim.lr"),
        ("seed", "seed"),
        ("accelerator", "accelerator"),
        ("precision", "precision"),
        ("eval_every", "eval_every_minutes"),
        ("num_nodes", "num_nodes"),
        ("strategy", "strategy"),
    ]:
        if getattr(args, flag) is not None:
            o[key] = getattr(args, flag)
    o.update(parse_override(s) for s in args.set)
    return o


def _no_gpu(accelerator: str | None) -> bool:
    """Whether a run would train on the CPU: asked to, or left to choose on a machine with no GPU."""
    import torch

    if accelerator in (None, "auto"):
        return not (torch.cuda.is_available() or torch.backends.mps.is_available())
    return accelerator == "cpu"


def cmd_pretrain(args: argparse.Namespace) -> None:
    from .errors import ConfigError
    from .methods import known_method

    if not args.resume:
        if not args.method:
            raise ConfigError("name a method (see `freelabel methods`), or give --resume RUN_DIR")
        known_method(args.method)  # an unknown name fails at once, before torch and the training libraries load
    from .config import check_writable, cpu_recipe, default_recipe, load_recipe, resolve, to_dict

    if args.resume:
        from .run import load_config

        out = check_writable(args.resume, "--resume")
        cfg = resolve(to_dict(load_config(out)), _overrides(args))
    else:
        data = args.data or "fashion-mnist"
        chosen = args.recipe or default_recipe(args.method, data)
        name, recipe = chosen, load_recipe(chosen)
        if not args.recipe and name == args.method and Path(data).expanduser().exists() and _no_gpu(args.accelerator):
            name, recipe = cpu_recipe(args.method) or (name, recipe)
        cfg = resolve({**recipe, "recipe": name}, {"method": args.method, **_overrides(args)})
        if name != chosen:
            logging.getLogger("freelabel").info(
                "no GPU here: pretraining with %s's CPU-sized recipe (%s at %d px); for the paper recipe give --recipe %s",
                args.method,
                cfg.backbone.name,
                cfg.views.size,
                args.method,
            )
        out = check_writable(args.out or f"runs/{args.method}-{Path(data).name}-{time.strftime('%Y%m%d-%H%M%S')}")
    from .engine import pretrain  # torch and the training libraries load only now

    pretrain(cfg, out, resume=bool(args.resume))


def cmd_eval(args: argparse.Namespace) -> None:
    from .config import ConfigError
    from .evaluate import PROTOCOLS, compared, evaluate

    if (args.run is None) == (args.model is None):
        raise ConfigError("give a run directory or --model NAME (not both)")
    spec = args.run or args.model
    if args.protocol == "all":
        for name, protocol in compared().items():
            print("\n".join(evaluate(name, spec, args.data, **protocol.compare)[1]))
        return
    options = {o.dest: getattr(args, o.dest) for o in PROTOCOLS[args.protocol].options}
    print("\n".join(evaluate(args.protocol, spec, args.data, **options)[1]))


def cmd_predict(args: argparse.Namespace) -> None:
    import csv

    from .evaluate.classifier import predict_folder

    rows, failed = predict_folder(args.classifier, args.images, args.out, args.k)
    for path in failed:
        print(f"unreadable: {path}", file=sys.stderr)
    if args.out:
        print(f"{len(rows)} images classified into {args.out}")
    else:
        writer = csv.writer(sys.stdout)
        writer.writerow(
            ["image"] + [f"{n}_{j}" for j in range(1, min(args.k, len(rows[0]) // 2) + 1) for n in ("label", "score")]
        )
        writer.writerows(rows)


def cmd_zeroshot(args: argparse.Namespace) -> None:
    from .config import check_writable
    from .evaluate.zeroshot import classify_folder, csv_bytes

    if args.out:
        check_writable(args.out, "--out", folder=False)
    rows = classify_folder(args.images, args.labels.split(","), args.model, args.out, weights=args.weights)
    if args.out:
        print(f"{len(rows)} images classified into {args.out}")
    else:
        print(csv_bytes(rows).decode("utf-8", errors="surrogateescape"), end="")  # the bytes --out would hold


def cmd_shards(args: argparse.Namespace) -> None:
    from .config import check_writable
    from .data.shards import make_shards

    shards = make_shards(
        args.src, check_writable(args.out), args.per_shard, args.workers, allow_outside=args.allow_outside
    )
    print(f"{len(shards)} shards written to {args.out}")


def cmd_index(args: argparse.Namespace) -> None:
    import json

    from .pipelines import search as ix

    if args.action == "build":
        from .config import check_writable

        r = ix.build_index(
            args.source, args.model, check_writable(args.out), args.split, args.batch_size, weights=args.weights
        )
        if r["model_changed"]:
            print("the model's weights changed since the last build: every image embedded again")
        print(
            f"{r['index']}: {r['rows']} images ({r['embedded']} embedded, {r['kept']} unchanged, {r['removed']} removed, "
            f"{len(r['failed'])} unreadable) in {r['seconds']:.1f} s, {r['images_per_s']:.0f} images/s"
        )
        for path in r["failed"]:
            print(f"  unreadable: {path}")
    elif args.action == "search":
        hits = ix.search(args.index, args.image, args.text, args.k)
        if args.json:
            print(json.dumps(hits, indent=1))
        for h in [] if args.json else hits:
            print(f"{h['rank']:3d}  {h['score']:.4f}  {h['path']}" + (f"  [{h['label']}]" if h["label"] else ""))
    else:
        r = ix.evaluate_index(args.index, args.k)
        if args.json:
            print(json.dumps(r, indent=1))
            return
        print(
            f"precision@{r['k']} (image-to-image, query excluded) over {r['rows']} images: {r['mean']:.2f}%  "
            f"({r['queries_per_s']:.0f} queries/s)"
        )
        for name, p in r["by_class"].items():
            print(f"  {name:14s} {p:6.2f}%")


def cmd_curate(args: argparse.Namespace) -> None:
    from .pipelines.curate import curate

    r = curate(
        args.source,
        args.model,
        args.out,
        split=args.split,
        threshold=args.threshold,
        pixel_threshold=args.pixel_threshold or None,
        clusters=args.clusters,
        per_cluster=args.per_cluster,
        n_select=args.select,
        seed=args.seed,
        weights=args.weights,
    )
    d = r["duplicates"]
    print(
        f"{r['images']} images: {d['dropped']} near-duplicates dropped ({d['groups']} groups at cosine >= {d['threshold']}"
        + (f" and pixel correlation >= {d['pixel_threshold']})" if d["pixel_threshold"] else ")")
        + (f", {r['balance']['dropped']} by balancing {r['balance']['clusters']} clusters" if "balance" in r else "")
        + (f", {r['select']['n']} selected" if "select" in r else "")
    )
    for g in d["examples"][:3]:
        print(
            f"  kept {g['kept']}, dropped "
            + ", ".join(
                f"{x['image']} (cosine {x['similarity']:.3f}"
                + (f", pixels {x['pixels']:.3f})" if x["pixels"] is not None else ")")
                for x in g["dropped"][:3]
            )
        )
    print(f"wrote {r['kept']} images to {r['list']} (report: {Path(r['list']).with_suffix('.json')})")


def cmd_export(args: argparse.Namespace) -> None:
    from .config import check_writable
    from .export import export_run

    if args.out:
        check_writable(args.out)
    out = export_run(args.run, args.format, args.out, args.weights)
    print(f"exported {args.run} as {args.format} to {out} (how to load it: {out / 'README.md'})")


def cmd_segment(args: argparse.Namespace) -> None:
    from .pipelines.segment import segment

    def numbers(items: list[str] | None, flag: str) -> list[list[float]] | None:
        try:
            return [[float(x) for x in item.split(",")] for item in items] if items else None
        except ValueError:
            raise ConfigError(f"{flag} takes comma-separated numbers, e.g. {flag} 10,20") from None

    from .config import ConfigError, check_writable

    if (args.out is None) == (args.coco is None):
        raise ConfigError(
            "give --out FOLDER (a JSON and an overlay per image) or --coco FILE (one COCO file), not both"
        )
    if args.out:
        check_writable(args.out)
    else:
        check_writable(args.coco, "--coco", folder=False)
    text = [t.strip() for t in args.text.split(",") if t.strip()] if args.text else None
    if args.coco:
        if args.points or args.boxes:
            raise ConfigError(
                "--coco labels images by --text phrases; points and boxes prompt single images (use --out)"
            )
        from .pipelines.segment import label_folder

        r = label_folder(
            args.images,
            args.coco,
            segmenter=args.segmenter,
            text=text,
            detector=args.detector,
            box_threshold=args.box_threshold,
            text_threshold=args.text_threshold,
            nms_threshold=args.nms,
            batch_size=args.batch_size,
            device=args.device,
            dtype=args.dtype,
        )
        for name in r["unreadable"]:
            print(f"  unreadable, left out: {name}")
        print(
            f"wrote {r['annotations']} objects in {r['images']} images to {r['coco']}"
            + (f" ({r['resumed']} images from the stopped run)" if r["resumed"] else "")
        )
        return
    records = segment(
        args.images,
        args.out,
        segmenter=args.segmenter,
        text=text,
        detector=args.detector,
        points=numbers(args.points, "--points"),
        boxes=numbers(args.boxes, "--boxes"),
        box_threshold=args.box_threshold,
        text_threshold=args.text_threshold,
        nms_threshold=args.nms,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
    )
    for r in records:
        labels = ", ".join(sorted({o["label"] for o in r["objects"]})) or "-"
        print(f"{r['image']}: {len(r['objects'])} objects ({labels})")
    print(f"wrote {len(records)} JSON + overlay PNG pairs to {args.out}")


def cmd_report(args: argparse.Namespace) -> None:
    from .errors import ConfigError
    from .report import make_report, report_pretrained

    if (args.run is None) == (args.model is None):
        raise ConfigError("give a run directory or --model NAME (not both)")
    if args.model:
        path = report_pretrained(args.model, args.data, args.out or "report", args.train_images, args.test_images)
    else:
        path = make_report(args.run, args.train_images, args.test_images)
    print(f"wrote {path}")


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare
    from .config import parse_override

    rows = compare(
        args.methods,
        args.data,
        args.out,
        args.minutes,
        args.steps,
        args.epochs,
        args.seed,
        args.eval_every,
        dict(parse_override(s) for s in args.set),
        args.finetune,
        args.record,
    )
    print((Path(args.out) / "leaderboard.md").read_text(), end="")
    failed = [r["name"] for r in rows if r["status"] != "done"]
    if failed:
        print(
            f"freelabel: {', '.join(failed)} did not finish (see each run's log.txt); the same command retries them",
            file=sys.stderr,
        )
        return 1


def cmd_results(args: argparse.Namespace) -> int:
    from .results import stale, write

    root = Path(args.root)
    if args.check:
        old = stale(root)
        for path in old:
            print(f"freelabel: {path} is stale against {root / 'results'}; run `freelabel results`", file=sys.stderr)
        return 1 if old else 0
    for path in write(root):
        print(f"wrote {path}")
    return 0


def cmd_list(args: argparse.Namespace) -> None:
    if args.command == "methods":
        from .methods import REGISTRY

        for name, (_, text) in REGISTRY.items():
            print(f"{name:12s} {text}")
    elif args.command == "backbones":
        from .catalog import NAMED

        for name, text in NAMED.items():
            print(f"{name:12s} {text}")
        print("timm:NAME    any timm model (timm.list_models()), e.g. timm:resnet26d, timm:convnext_atto")
    else:
        from .config import list_recipes, load_recipe

        for name in list_recipes():
            r = load_recipe(name)
            print(f"{name:26s} {r.get('about', '')}")


def setup_logging(verbose: bool = False) -> None:
    """freelabel's log lines on stderr, as bare messages; Lightning's only when ``verbose``."""
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="%(message)s")
    for name in ("lightning.fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    from .errors import FreelabelError

    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 come out as their own bytes
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0), or a bad flag whose one line is printed (2)
        return e.code if isinstance(e.code, int) else 2
    setup_logging(args.verbose)
    commands = {
        "pretrain": cmd_pretrain,
        "eval": cmd_eval,
        "zeroshot": cmd_zeroshot,
        "shards": cmd_shards,
        "index": cmd_index,
        "curate": cmd_curate,
        "export": cmd_export,
        "segment": cmd_segment,
        "predict": cmd_predict,
        "report": cmd_report,
        "compare": cmd_compare,
        "results": cmd_results,
    }
    status = 0  # a sub-command may return another exit status (compare: 1 while a method is unfinished)
    try:
        status = commands.get(args.command, cmd_list)(args)
    except FreelabelError as e:
        print(f"freelabel: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError as e:  # a file that cannot be read or written where the command needs it
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            print(
                f"freelabel: error: no space left on the device for {e.filename or 'a file'}; free some space and run "
                "the command again (a pretrain run continues with --resume RUN_DIR)",
                file=sys.stderr,
            )
        else:
            where = f": {e.filename}" if e.filename else ""
            print(f"freelabel: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
