"""The evaluation protocols, by name: what ``freelabel eval NAME``, ``compare`` and the report know of each.

A protocol is a function ``evaluate(spec, data=None, **options) -> dict`` that scores a run directory
or a pretrained model (opened with :func:`freelabel.encoder.load_encoder`), takes its features from
:mod:`.features`, writes its result into a run's ``metrics.json[name]`` and returns it; and a function
``summary(results) -> lines`` that says it in a few lines. Adding one is a file in this package (or
anywhere importable) and a line in :data:`PROTOCOLS`: the command line grows its sub-command from the
line's options, ``compare`` scores every method with it where the line says how, the leaderboard shows
its ``columns``, and the report shows its section of ``metrics.json`` (``tests/test_toy_protocol.py``).

The registry holds names and strings only, so that ``--help`` loads no torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Option:
    """One flag of ``freelabel eval NAME``: argparse's arguments, with ``type`` named (the command line's
    checked types: int, float, positive, positive_int, fraction, labels); flags of one ``group`` exclude
    each other."""

    flags: tuple[str, ...]
    dest: str
    help: str
    type: str | None = None
    default: Any = None
    action: str | None = None
    nargs: str | None = None
    choices: tuple[str, ...] | None = None
    const: Any = None
    group: str | None = None


@dataclass(frozen=True)
class Column:
    """A leaderboard column: the value at ``path`` of the protocol's ``metrics.json`` section."""

    name: str
    label: str
    path: tuple[str, ...]


@dataclass(frozen=True)
class Protocol:
    """``function`` and ``summary`` as ``"package.module:function"``; ``compare``: the options ``compare``
    scores every method with (None: it does not run this protocol)."""

    function: str
    summary: str
    help: str
    data: str = "labelled data (default: the run's data; fashion-mnist for a pretrained model)"
    options: tuple[Option, ...] = ()
    compare: dict | None = None
    columns: tuple[Column, ...] = field(default=())


BASELINES = Option(
    ("--baselines",), "baselines", "also score the random-init backbone and raw pixels", action="store_true"
)
SEED = Option(("--seed",), "seed", "seed of the validation split, label subset and training", "int", 0)
WEIGHTS = Option(
    ("--weights",),
    "weights",
    "weights file for a torchvision:NAME model (a state dict) or a run (a .safetensors file or checkpoint folder)",
)
MASKED = "composed (Fashion-MNIST garments on canvases with exact masks, the default), or a folder with images/ and masks/ (PNG class ids, 255 ignored)"

PROTOCOLS: dict[str, Protocol] = {
    "knn": Protocol(
        "freelabel.evaluate.knn:evaluate_knn",
        "freelabel.evaluate.knn:summary",
        "weighted k-NN top-1 on frozen features (k=20, 200)",
        "labelled data (default: the run's data); a folder uses train/ and val/ or a 20%% hold-out",
        (
            BASELINES,
            Option(("-k",), "ks", "numbers of neighbours", "positive_int", [20, 200], nargs="+"),
            Option(("--temperature",), "temperature", "softmax temperature of the votes", "positive", 0.07),
            WEIGHTS,
        ),
        compare={"baselines": True},
        columns=(
            Column("knn_top1_k20", "k-NN k=20", ("trained", "top1_k20")),
            Column("knn_top1_k200", "k-NN k=200", ("trained", "top1_k200")),
            Column("random_init_k20", "random init k=20", ("random_init", "top1_k20")),
        ),
    ),
    "linear": Protocol(
        "freelabel.evaluate.linear:evaluate_linear",
        "freelabel.evaluate.linear:summary",
        "linear probe on frozen features (a grid of heads, best on a validation split)",
        options=(
            BASELINES,
            Option(("--epochs",), "epochs", "epochs of the linear heads", "positive_int", 25),
            SEED,
            Option(("--out",), "out", "classifier folder to write (default: inside the run directory)"),
        ),
        compare={},
        columns=(Column("linear_top1", "linear", ("trained", "top1")),),
    ),
    "finetune": Protocol(
        "freelabel.evaluate.finetune:finetune",
        "freelabel.evaluate.finetune:summary",
        "fine-tune backbone + linear head, with all or few labels (or from scratch)",
        options=(
            Option(("--labels",), "labels", "1%%, 10%%, 100%% of each class, or N images per class", "labels", "100%"),
            Option(
                ("--subset",), "subset_file", "train on the images this file lists (one path or row number per line)"
            ),
            Option(
                ("--init",),
                "init",
                "random: the same backbone from its random init (the supervised-from-scratch reference)",
                default="trained",
                choices=("trained", "random"),
            ),
            Option(("--from-scratch",), "init", "the same as --init random", action="store_const", const="random"),
            Option(
                ("--epochs",),
                "epochs",
                "budget in epochs (default: 10, and at least 500 steps)",
                "positive",
                group="budget",
            ),
            Option(("--minutes",), "minutes", "budget in minutes of training", "positive", group="budget"),
            Option(("--lr",), "lr", "AdamW peak learning rate for a batch of 256", "positive", 1e-3),
            Option(("--layer-decay",), "layer_decay", "ViTs: lr factor per block, top to bottom", "fraction", 0.75),
            Option(("--batch-size",), "batch_size", "images per step", "positive_int", 256),
            SEED,
            Option(("--out",), "out", "classifier folder to write (default: inside the run directory)"),
        ),
    ),
    "dense": Protocol(
        "freelabel.evaluate.dense:evaluate_dense",
        "freelabel.evaluate.dense:summary",
        "dense linear probe on frozen patch tokens / feature maps: mIoU",
        MASKED,
        (Option(("--baselines",), "baselines", "also score the random-init backbone", action="store_true"),),
    ),
    "attention": Protocol(
        "freelabel.evaluate.attention:evaluate_attention",
        "freelabel.evaluate.attention:summary",
        "CLS attention maps of a ViT's last block, per head, and their object Jaccard",
        MASKED,
        (
            Option(("--out",), "out", "folder for the attention images (default: RUN/attention)"),
            Option(("--images",), "images", "images to draw", "positive_int", 8),
            Option(("--baselines",), "baselines", "also score the random-init backbone", action="store_true"),
        ),
    ),
    "zeroshot": Protocol(
        "freelabel.evaluate.zeroshot:evaluate_zeroshot",
        "freelabel.evaluate.zeroshot:summary",
        "zero-shot top-1 by class names (prompt ensembles) of a clip/siglip run or a pretrained model",
        "test data (default: the run's data): emoji-captions, fashion-mnist, a folder, ...",
        (WEIGHTS,),
    ),
    "retrieval": Protocol(
        "freelabel.evaluate.retrieval:evaluate_retrieval",
        "freelabel.evaluate.retrieval:summary",
        "image-caption retrieval recall@1/5/10 both ways and CLIPScore",
        "caption data (default: the run's data): emoji-captions, a CSV/JSONL, a captioned folder",
        (WEIGHTS,),
    ),
}


def compared() -> dict[str, Protocol]:
    """The protocols ``compare`` (and ``freelabel eval all``) score every run with."""
    return {name: p for name, p in PROTOCOLS.items() if p.compare is not None}


def load(target: str):
    """The function ``"package.module:function"`` names."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def evaluate(name: str, spec: str, data: str | None = None, **options) -> tuple[dict, list[str]]:
    """Run protocol ``name`` on ``spec``: its results, and its summary's lines."""
    protocol = PROTOCOLS[name]
    results = load(protocol.function)(spec, **({"data": data} if data else {}), **options)
    return results, load(protocol.summary)(results)


def scalars(name: str, results: dict) -> str:
    """The first line of most summaries: the protocol, its data and the result's plain values."""
    import json

    data = results.get("data", "")
    return f"{name} on {data}: " + json.dumps({k: v for k, v in results.items() if not isinstance(v, dict)})
