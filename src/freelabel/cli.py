"""The ``freelabel`` command: a thin layer over the library; each sub-command calls one function."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import time
from pathlib import Path

EXAMPLES = """examples:
  freelabel pretrain simclr --data fashion-mnist --minutes 10 --out runs/x
  freelabel eval knn runs/x --baselines
  freelabel pretrain --resume runs/x
  freelabel export runs/x --format transformers
  freelabel pretrain simclr --data ~/photos --backbone resnet18 --set views.size=96 --epochs 100
  freelabel segment photo.jpg --text "cat,dog" --detector IDEA-Research/grounding-dino-tiny --segmenter facebook/sam-vit-base --out seg
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="freelabel", description="Learn visual representations without labels.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pt = sub.add_parser("pretrain", help="pretrain a backbone without labels",
                        description="Pretrain a backbone with a self-supervised METHOD. The recipe gives every "
                        "setting; the flags below and --set override it.")  # fmt: skip
    pt.add_argument("method", nargs="?", help="method name (see `freelabel methods`); omit with --resume")
    pt.add_argument("--data", help="fashion-mnist (default), emoji, or a folder of images (class sub-folders or flat); "
                    "clip/siglip: emoji-captions, a CSV/JSONL of image,caption, a folder with .txt captions, or .tar shards")  # fmt: skip
    pt.add_argument("--recipe", help="recipe name (see `freelabel recipes`) or YAML file; "
                    "default: METHOD-DATA if it exists, else the method's paper recipe")  # fmt: skip
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
    pt.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override any recipe key, e.g. --set optim.weight_decay=1e-5 (repeatable)")  # fmt: skip
    pt.add_argument("--out", help="run directory (default: runs/METHOD-DATA-TIME)")
    pt.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest checkpoint")

    ev = sub.add_parser("eval", help="evaluate a run's backbone")
    evsub = ev.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    knn = evsub.add_parser("knn", help="weighted k-NN top-1 on frozen features (k=20, 200)")
    knn.add_argument("run", nargs="?", help="run directory (or --model)")
    knn.add_argument("--model", help="a pretrained model instead of a run: hub name, local folder or torchvision:NAME")
    knn.add_argument("--weights", help="weights file for a torchvision:NAME model (a state dict) or a run (a .safetensors file or checkpoint folder)")
    knn.add_argument("--data", help="labelled data (default: the run's data); a folder uses train/ and val/ or a 20%% hold-out")
    knn.add_argument("--baselines", action="store_true", help="also score the random-init backbone and raw pixels")
    knn.add_argument("-k", type=int, nargs="+", default=[20, 200], help="numbers of neighbours")
    knn.add_argument("--temperature", type=float, default=0.07)

    for protocol, text in (("zeroshot", "zero-shot top-1 by class names (prompt ensembles) of a clip/siglip run or a pretrained model"),
                           ("retrieval", "image-caption retrieval recall@1/5/10 both ways and CLIPScore")):  # fmt: skip
        it = evsub.add_parser(protocol, help=text)
        it.add_argument("run", help="clip/siglip run directory, or a pretrained model (hub name or local folder)")
        it.add_argument("--data", help="test data (default: the run's data): emoji-captions, fashion-mnist, a folder, ...")
        it.add_argument("--weights", help="weights file for a torchvision:NAME model (a state dict) or a run (a .safetensors file or checkpoint folder)")

    _protocol_parsers(evsub)

    pr = sub.add_parser("predict", help="apply a classifier folder (from eval linear/finetune) to a folder of images")
    pr.add_argument("classifier", help="classifier folder")
    pr.add_argument("images", help="folder of images (searched recursively)")
    pr.add_argument("--out", help="CSV to write (image, label_1, score_1, ...); default: print it")
    pr.add_argument("-k", type=int, default=5, help="labels per image")

    zs = sub.add_parser("zeroshot", help="classify a folder of images by class names, zero-shot")
    zs.add_argument("images", help="folder of images")
    zs.add_argument("--labels", required=True, help='class names, comma-separated: "cat,dog,bird"')
    zs.add_argument("--model", required=True, help="clip/siglip run directory, or a pretrained model (hub name or local folder)")
    zs.add_argument("--weights", help="weights file for a torchvision:NAME model (a state dict) or a run (a .safetensors file or checkpoint folder)")
    zs.add_argument("--out", help="CSV to write (image, label, score); default: print it")

    sh = sub.add_parser("shards", help="WebDataset shards of images (labels, captions), streamed in training")
    shsub = sh.add_subparsers(dest="action", required=True, metavar="ACTION")
    mk = shsub.add_parser("make", help="write shards from an image folder (class sub-folders become labels), a "
                          "CSV/JSONL of image,caption or a folder with .txt captions")  # fmt: skip
    mk.add_argument("src", help="image folder, CSV/JSONL file or captioned folder")
    mk.add_argument("out", help="folder for shard-000000.tar, ... and shards.json")
    mk.add_argument("--per-shard", type=int, default=1000, help="samples per shard")
    mk.add_argument("--workers", type=int, help="processes writing shards (default: the cores available)")

    ix = sub.add_parser("index", help="an embedding index of images: build, search, evaluate")
    ixsub = ix.add_subparsers(dest="action", required=True, metavar="ACTION")
    b = ixsub.add_parser("build", help="create or update an index (only new or changed images are embedded)")
    b.add_argument("source", help="a folder of images, or fashion-mnist / emoji (its --split)")
    b.add_argument("--model", required=True, help="run directory, hub name, model folder or torchvision:NAME")
    b.add_argument("--weights", help="weights file for a torchvision:NAME model (a state dict) or a run (a .safetensors file or checkpoint folder)")
    b.add_argument("--out", required=True, help="index folder")
    b.add_argument("--split", default="test", help="split of an embedded data set (default: test)")
    b.add_argument("--batch-size", type=int, default=64)
    s = ixsub.add_parser("search", help="top-k images by similarity to an image or (image-text models) a text")
    s.add_argument("index", help="index folder")
    query = s.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", help="query image file")
    query.add_argument("--text", help="query text (CLIP/SigLIP indexes)")
    s.add_argument("-k", type=int, default=10, help="number of results")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e = ixsub.add_parser("eval", help="image-to-image precision@k by class (each image queries the rest)")
    e.add_argument("index", help="index folder")
    e.add_argument("-k", type=int, default=10)
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")

    ex = sub.add_parser("export", help="export a run's backbone for transformers, timm or freelabel",
                        description="Write a folder that loads outside freelabel and gives the run's features "
                        "(checked to 1e-4 before it is kept): transformers (AutoModel.from_pretrained), timm "
                        "(timm.create_model; the call is in the folder's README.md), or safetensors (bare weights + "
                        "config.yaml, loaded by freelabel.methods.load_backbone).")  # fmt: skip
    ex.add_argument("run", help="run directory")
    ex.add_argument("--format", required=True, choices=["transformers", "timm", "safetensors"])
    ex.add_argument("--weights", help="export these weights of the run (a .safetensors file or checkpoint folder)")
    ex.add_argument("--out", help="export folder (default: RUN/export-FORMAT)")

    sg = sub.add_parser("segment", help="segment images by text phrases, points or boxes",
                        description="Segment IMAGEs and write NAME.json (boxes, scores, labels, masks as COCO RLE) and "
                        "NAME.png (overlay) per image into --out. By text: --text with --detector (Grounding DINO or "
                        "OWLv2) and a SAM/SAM2 --segmenter, or a SAM3 --segmenter alone. By prompts: --points and/or "
                        "--boxes with a SAM/SAM2 --segmenter. Models are hub names or save_pretrained folders.")  # fmt: skip
    sg.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or with --coco also folders of images")
    sg.add_argument("--text", help='comma-separated phrases, e.g. "cat,dog"')
    sg.add_argument("--detector", help="Grounding DINO or OWLv2 model turning --text into boxes")
    sg.add_argument("--segmenter", required=True, help="SAM, SAM2 or SAM3 model")
    sg.add_argument("--points", nargs="+", metavar="X,Y[,LABEL]", help="prompt points; LABEL 1 foreground (default), 0 background")  # fmt: skip
    sg.add_argument("--boxes", nargs="+", metavar="X0,Y0,X1,Y1", help="prompt boxes, one object each")
    sg.add_argument("--box-threshold", type=float, default=0.3, help="keep detections (or SAM3 instances) scoring above this")  # fmt: skip
    sg.add_argument("--text-threshold", type=float, default=0.25, help="Grounding DINO: a phrase's token score to label a box")  # fmt: skip
    sg.add_argument("--nms", type=float, default=0.5, metavar="IOU", help="per-label NMS IoU threshold")
    sg.add_argument("--batch-size", type=int, default=4, help="images per detector forward pass")
    sg.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    sg.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="default: bf16 on GPU, fp32 on CPU")
    sg.add_argument("--out", help="output folder (a JSON and an overlay PNG per image)")
    sg.add_argument("--coco", metavar="FILE", help="instead: one COCO instances file for all the images (by --text), "
                    "resumable: a rerun continues where a stopped one left off")  # fmt: skip

    sub.add_parser("methods", help="list the methods")
    sub.add_parser("backbones", help="list the backbones")
    sub.add_parser("recipes", help="list the recipes")
    return p


def _protocol_parsers(evsub) -> None:
    """``eval linear``, ``finetune``, ``dense``, ``attention`` (:mod:`freelabel.evaluate`)."""
    model = "run directory, or a pretrained model: hub name, local folder or torchvision:NAME"
    lin = evsub.add_parser("linear", help="linear probe on frozen features (a grid of heads, best on a validation split)")
    ft = evsub.add_parser("finetune", help="fine-tune backbone + linear head, with all or few labels (or from scratch)")
    de = evsub.add_parser("dense", help="dense linear probe on frozen patch tokens / feature maps: mIoU")
    at = evsub.add_parser("attention", help="CLS attention maps of a ViT's last block, per head, and their object Jaccard")
    for p in (lin, ft, de, at):
        p.add_argument("run", help=model)
    for p in (lin, ft):
        p.add_argument("--data", help="labelled data (default: the run's data; fashion-mnist for a pretrained model)")
        p.add_argument("--out", help="classifier folder to write (default: inside the run directory)")
        p.add_argument("--seed", type=int, default=0, help="seed of the validation split, label subset and training")
    for p in (de, at):
        p.add_argument("--data", default="composed", help="composed (Fashion-MNIST garments on canvases with exact "
                       "masks, the default), or a folder with images/ and masks/ (PNG class ids, 255 ignored)")  # fmt: skip
    for p in (lin, de, at):
        p.add_argument("--baselines", action="store_true", help="also score the random-init backbone" +
                       (" and raw pixels" if p is lin else ""))  # fmt: skip
    lin.add_argument("--epochs", type=int, default=25, help="epochs of the linear heads")
    ft.add_argument("--labels", default="100%", help="1%%, 10%%, 100%% of each class, or N images per class")
    ft.add_argument("--subset", metavar="FILE", help="train on the images this file lists (one path or row number per line)")
    ft.add_argument("--init", choices=["trained", "random"], default="trained",
                    help="random: the same backbone from its random init (the supervised-from-scratch reference)")  # fmt: skip
    ft.add_argument("--from-scratch", dest="init", action="store_const", const="random", help="the same as --init random")
    budget = ft.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=float, help="budget in epochs (default: 10, and at least 500 steps)")
    budget.add_argument("--minutes", type=float, help="budget in minutes of training")
    ft.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate for a batch of 256")
    ft.add_argument("--layer-decay", type=float, default=0.75, help="ViTs: lr factor per block, top to bottom")
    ft.add_argument("--batch-size", type=int, default=256)
    at.add_argument("--out", help="folder for the attention images (default: RUN/attention)")
    at.add_argument("--images", type=int, default=8, help="images to draw")


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
        o["devices"] = int(args.devices) if args.devices.isdigit() else args.devices
    for flag, key in [("batch_size", "optim.batch_size"), ("lr", "optim.lr"), ("seed", "seed"),
                      ("accelerator", "accelerator"), ("precision", "precision"), ("eval_every", "eval_every_minutes"),
                      ("num_nodes", "num_nodes"), ("strategy", "strategy")]:  # fmt: skip
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
    from .config import ConfigError, cpu_recipe, default_recipe, load_recipe, resolve, to_dict
    from .methods import known_method

    if args.resume:
        from .run import load_config

        out = Path(args.resume)
        cfg = resolve(to_dict(load_config(out)), _overrides(args))
    elif not args.method:
        raise ConfigError("name a method (see `freelabel methods`), or give --resume RUN_DIR")
    else:
        data = args.data or "fashion-mnist"
        known_method(args.method)  # an unknown name fails at once, before torch and the training libraries load
        chosen = args.recipe or default_recipe(args.method, data)
        name, recipe = chosen, load_recipe(chosen)
        if not args.recipe and name == args.method and Path(data).expanduser().exists() and _no_gpu(args.accelerator):
            name, recipe = cpu_recipe(args.method) or (name, recipe)
        cfg = resolve({**recipe, "recipe": name}, {"method": args.method, **_overrides(args)})
        if name != chosen:
            logging.getLogger("freelabel").info(
                "no GPU here: pretraining with %s's CPU-sized recipe (%s at %d px); for the paper recipe give --recipe %s",
                args.method, cfg.backbone.name, cfg.views.size, args.method)  # fmt: skip
        out = Path(args.out or f"runs/{args.method}-{Path(data).name}-{time.strftime('%Y%m%d-%H%M%S')}")
    from .engine import pretrain  # torch and the training libraries load only now

    pretrain(cfg, out, resume=bool(args.resume))


def cmd_eval(args: argparse.Namespace) -> None:
    if args.protocol in ("linear", "finetune", "dense", "attention"):
        return cmd_eval_protocol(args)
    if args.protocol != "knn":
        return cmd_eval_imagetext(args)
    from .config import ConfigError
    from .evaluate.knn import evaluate_knn

    if (args.run is None) == (args.model is None):
        raise ConfigError("give a run directory or --model NAME (not both)")
    spec = args.run or args.model
    results = evaluate_knn(spec, args.data, args.baselines, tuple(args.k), args.temperature, args.weights)
    names = ("trained", "random_init", "raw_pixels", "pretrained")
    rows = [(name, results[name]) for name in names if name in results]
    print(f"k-NN top-1 on {results['data']} (test {results['test_images']}, features of train {results['train_images']})")
    for name, acc in rows:
        print(f"  {name:12s} " + "  ".join(f"k={k}: {acc[f'top1_k{k}']:.2f}%" for k in args.k))


def cmd_eval_imagetext(args: argparse.Namespace) -> None:
    import json

    if args.protocol == "zeroshot":
        from .evaluate.zeroshot import evaluate_zeroshot

        results = evaluate_zeroshot(args.run, args.data, weights=args.weights)
    else:
        from .evaluate.retrieval import evaluate_retrieval

        results = evaluate_retrieval(args.run, args.data, weights=args.weights)
    print(json.dumps(results, indent=2))


def cmd_eval_protocol(args: argparse.Namespace) -> None:
    import json

    if args.protocol == "linear":
        from .evaluate.linear import evaluate_linear

        r = evaluate_linear(args.run, args.data, args.baselines, args.out, args.epochs, args.seed)
        rows = {k: f"{r[k]['top1']:.2f}%" for k in ("trained", "random_init", "raw_pixels") if k in r}
    elif args.protocol == "finetune":
        from .evaluate.finetune import finetune

        r = finetune(args.run, args.data, args.labels, subset_file=args.subset, init=args.init, epochs=args.epochs,
                     minutes=args.minutes, lr=args.lr, layer_decay=args.layer_decay, batch_size=args.batch_size,
                     seed=args.seed, out=args.out)  # fmt: skip
        rows = {args.init: f"{r['top1']:.2f}% ({r['train_images']} labelled images, {r['steps']} steps, {r['minutes']} min)"}
    elif args.protocol == "dense":
        from .evaluate.dense import evaluate_dense

        r = evaluate_dense(args.run, args.data, args.baselines)
        rows = {k: f"mIoU {r[k]['miou']:.2f}%" for k in ("trained", "random_init") if k in r}
    else:
        from .evaluate.attention import evaluate_attention

        r = evaluate_attention(args.run, args.data, args.out, args.images, args.baselines)
        rows = {k: f"Jaccard {r[k]['jaccard_mean_head']:.2f}% (best head {r[k]['jaccard_best_head']:.2f}%)"
                for k in ("trained", "random_init") if k in r}  # fmt: skip
    print(f"{args.protocol} on {r['data']}: " + json.dumps({k: v for k, v in r.items() if not isinstance(v, dict)}))
    for name, text in rows.items():
        print(f"  {name:12s} {text}")


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
        writer.writerow(["image"] + [f"{n}_{j}" for j in range(1, min(args.k, len(rows[0]) // 2) + 1) for n in ("label", "score")])
        writer.writerows(rows)


def cmd_zeroshot(args: argparse.Namespace) -> None:
    from .evaluate.zeroshot import classify_folder

    rows = classify_folder(args.images, args.labels.split(","), args.model, args.out, weights=args.weights)
    if args.out:
        print(f"{len(rows)} images classified into {args.out}")
    else:
        print("image,label,score")
        for path, label, score in rows:
            print(f"{path},{label},{score:.4f}")


def cmd_shards(args: argparse.Namespace) -> None:
    from .data.shards import make_shards

    shards = make_shards(args.src, args.out, args.per_shard, args.workers)
    print(f"{len(shards)} shards written to {args.out}")


def cmd_index(args: argparse.Namespace) -> None:
    import json

    from .pipelines import search as ix

    if args.action == "build":
        r = ix.build_index(args.source, args.model, args.out, args.split, args.batch_size, weights=args.weights)
        print(f"{r['index']}: {r['rows']} images ({r['embedded']} embedded, {r['kept']} unchanged, {r['removed']} removed, "
              f"{len(r['failed'])} unreadable) in {r['seconds']:.1f} s, {r['images_per_s']:.0f} images/s")  # fmt: skip
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
        print(f"precision@{r['k']} (image-to-image, query excluded) over {r['rows']} images: {r['mean']:.2f}%  "
              f"({r['queries_per_s']:.0f} queries/s)")  # fmt: skip
        for name, p in r["by_class"].items():
            print(f"  {name:14s} {p:6.2f}%")


def cmd_export(args: argparse.Namespace) -> None:
    from .export import export_run

    out = export_run(args.run, args.format, args.out, args.weights)
    print(f"exported {args.run} as {args.format} to {out} (how to load it: {out / 'README.md'})")


def cmd_segment(args: argparse.Namespace) -> None:
    from .pipelines.segment import segment

    def numbers(items: list[str] | None, flag: str) -> list[list[float]] | None:
        try:
            return [[float(x) for x in item.split(",")] for item in items] if items else None
        except ValueError:
            raise ConfigError(f"{flag} takes comma-separated numbers, e.g. {flag} 10,20") from None

    from .config import ConfigError

    text = [t.strip() for t in args.text.split(",") if t.strip()] if args.text else None
    if (args.out is None) == (args.coco is None):
        raise ConfigError("give --out FOLDER (a JSON and an overlay per image) or --coco FILE (one COCO file), not both")
    if args.coco:
        if args.points or args.boxes:
            raise ConfigError("--coco labels images by --text phrases; points and boxes prompt single images (use --out)")
        from .pipelines.segment import label_folder

        r = label_folder(args.images, args.coco, segmenter=args.segmenter, text=text, detector=args.detector,
                         box_threshold=args.box_threshold, text_threshold=args.text_threshold, nms_threshold=args.nms,
                         batch_size=args.batch_size, device=args.device, dtype=args.dtype)  # fmt: skip
        for name in r["unreadable"]:
            print(f"  unreadable, left out: {name}")
        print(f"wrote {r['annotations']} objects in {r['images']} images to {r['coco']}"
              + (f" ({r['resumed']} images from the stopped run)" if r["resumed"] else ""))  # fmt: skip
        return
    records = segment(args.images, args.out, segmenter=args.segmenter, text=text, detector=args.detector,
                      points=numbers(args.points, "--points"), boxes=numbers(args.boxes, "--boxes"),
                      box_threshold=args.box_threshold, text_threshold=args.text_threshold, nms_threshold=args.nms,
                      batch_size=args.batch_size, device=args.device, dtype=args.dtype)  # fmt: skip
    for r in records:
        labels = ", ".join(sorted({o["label"] for o in r["objects"]})) or "-"
        print(f"{r['image']}: {len(r['objects'])} objects ({labels})")
    print(f"wrote {len(records)} JSON + overlay PNG pairs to {args.out}")


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

    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    commands = {
        "pretrain": cmd_pretrain,
        "eval": cmd_eval,
        "zeroshot": cmd_zeroshot,
        "shards": cmd_shards,
        "index": cmd_index,
        "export": cmd_export,
        "segment": cmd_segment,
        "predict": cmd_predict,
    }
    try:
        commands.get(args.command, cmd_list)(args)
    except FreelabelError as e:
        print(f"freelabel: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"freelabel: error: no space left on the device for {e.filename or 'a file'}; free some space and run "
              "the command again (a pretrain run continues with --resume RUN_DIR)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
