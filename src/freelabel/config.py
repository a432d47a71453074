"""Run configuration: YAML recipes, command-line overrides, and checks with clear messages."""

from __future__ import annotations

import dataclasses
import math
import re
import tempfile
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


@dataclass
class ViewConfig:
    """One kind of view (SimCLR uses two of the same kind; DINO's local crops are another kind)."""

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    jitter: float = 0.8  # probability of colour jitter
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale: float = 0.2
    blur: float = 0.5  # probability of Gaussian blur
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # in pixels of a 224-pixel view; scaled with size
    solarize: float = 0.0
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)


@dataclass
class DataConfig:
    name: str = "fashion-mnist"  # an embedded data set or a folder of images
    image_size: int | None = None  # size images are decoded at (default: the view size)
    channels: int | None = None  # set by the run from the data: 1 for grey sets, 3 for folders
    workers: int = 2  # decoding processes for image folders (0: decode in the training process)
    allow_outside: bool = False  # a CSV/JSONL caption list may name images outside its folder


@dataclass
class BackboneConfig:
    name: str = "convnet"
    args: dict = field(default_factory=dict)  # passed to the backbone (patch_size, widths, ...)


@dataclass
class OptimConfig:
    name: str = "adamw"  # any timm optimizer: adamw, lars, sgd, lamb, ...
    lr: float = 1e-3  # for a global batch of 256, scaled linearly with the batch
    weight_decay: float = 1e-6
    weight_decay_end: float | None = None  # cosine schedule of the weight decay to this value (DINO)
    momentum: float = 0.9  # for SGD and LARS
    betas: tuple[float, float] | None = None  # for Adam(W) and LAMB; None: the optimiser's default (0.9, 0.999)
    warmup: float = 0.05  # fraction of the run with a linear warm-up
    min_lr: float = 0.0  # end of the cosine decay, as a fraction of the peak
    batch_size: int = 256  # per process
    clip_grad: float | None = None


@dataclass
class BudgetConfig:
    epochs: float | None = None
    steps: int | None = None
    minutes: float | None = None  # training time, not counting evaluation or checkpoints


@dataclass
class RunConfig:
    method: str = "simclr"
    method_args: dict = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    views: ViewConfig = field(default_factory=ViewConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    seed: int = 0
    accelerator: str = "auto"  # cpu, cuda, mps, auto
    devices: int | str = 1
    num_nodes: int = 1
    precision: str = "auto"  # auto: bf16-mixed where the hardware has bf16 units, else 32-true
    channels_last: bool = True
    sync_bn: bool = False  # BatchNorm statistics over all processes (SyncBN)
    compile: bool = False  # torch.compile the method
    strategy: str = "ddp"  # ddp or fsdp (shards every weight over the devices; GPUs only)
    activation_checkpointing: bool = False  # ViT blocks recompute their activations in the backward pass
    checkpoint_every: int = 1000  # steps
    log_every: int = 10  # steps
    eval_every_minutes: float | None = None  # online k-NN during training (labelled data only)
    recipe: str = ""  # the recipe this run started from
    about: str = ""  # one line on what the recipe is for


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert ``value`` to the annotated type, or raise a ConfigError naming ``where``."""
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of {', '.join(f.name for f in dataclasses.fields(hint))}")
        return from_dict(hint, value, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, where) for v in value)
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (hint is int and value != int(value)):
            raise ConfigError(f"{where} must be {'an integer' if hint is int else 'a number'}, got {value!r}")
        return hint(value)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if hint is str and not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, got {value!r}")
    if hint is dict and not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, got {value!r}")
    return value


def from_dict(cls, d: dict, where: str = ""):
    """Build dataclass ``cls`` from a dict, refusing unknown keys with the list of valid ones."""
    hints = _hints(cls)
    prefix = f"{where}." if where else ""
    unknown = set(d) - set(hints)
    if unknown:
        raise ConfigError(f"unknown key {prefix}{sorted(unknown)[0]}; valid: {', '.join(hints)}")
    return cls(**{k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in d.items()})


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def set_dotted(d: dict, dotted: str, value: Any) -> None:
    """``set_dotted(d, "optim.lr", 0.1)`` sets ``d["optim"]["lr"]``."""
    *parents, leaf = dotted.split(".")
    for p in parents:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"cannot set {dotted}: {p} is not a section")
    d[leaf] = value


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's numbers: ``1e-3`` is a float, not the string PyYAML's 1.1 rules make it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.inf|\.Inf|\.INF|\.nan|\.NaN|\.NAN)$"
    ),
    list("-+0123456789."),
)


def read_yaml(text: str, where: str = "the YAML") -> Any:
    """Plain YAML data (safe: a tag that would build a Python object, or an alias, is refused with a ConfigError)."""
    try:
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=_Loader)):
            raise ConfigError(f"{where} uses a YAML alias (*name); write the value out instead")  # no alias bombs
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(
            f"{where} is not plain YAML data{line}: {getattr(e, 'problem', None) or e}".splitlines()[0]
        ) from None


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=0.1"`` -> ``("optim.lr", 0.1)``; the value is read as YAML."""
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key or not all(part.isidentifier() for part in key.split(".")):
        raise ConfigError(f"--set takes KEY=VALUE with a dotted KEY (for example optim.lr=0.1), got {text!r}")
    return key, read_yaml(raw, f"the value of --set {key}")


def recipe_dir() -> Path:
    return Path(str(resources.files("freelabel") / "recipes"))


def list_recipes() -> list[str]:
    return sorted(p.stem for p in recipe_dir().glob("*.yaml"))


def default_recipe(method: str, data: str) -> str:
    """``METHOD-DATA`` when such a recipe exists (the CPU recipes), else the method's paper recipe."""
    specific = f"{method}-{data}"
    return specific if specific in list_recipes() else method


CPU_VIEW_SIZE = 64  # the views of CNN recipes cut to a CPU's size for photos


def cpu_recipe(method: str) -> tuple[str, dict] | None:
    """For a folder of photos on a machine without a GPU: the method's recipe for a laptop CPU (small
    backbone and views; ``METHOD-emoji``, ``-emoji-captions`` or ``-fashion-mnist``), with the paper
    recipe's colour augmentation and normalisation where the CPU recipe is a grey one, and CNN views of
    ``CPU_VIEW_SIZE`` pixels (ViT recipes keep the size their patch grid is tuned to). Its name and
    the recipe; ``None`` for a method with no CPU recipe."""
    name = next(
        (f"{method}-{d}" for d in ("emoji", "emoji-captions", "fashion-mnist") if f"{method}-{d}" in list_recipes()),
        None,
    )
    if name is None:
        return None
    recipe, paper = load_recipe(name), load_recipe(method)
    views = recipe.setdefault("views", {})
    if name.endswith("fashion-mnist"):
        views.update(
            {k: v for k, v in paper.get("views", {}).items() if k in ("saturation", "hue", "grayscale", "mean", "std")}
        )
    if recipe.get("backbone", {}).get("name") == "convnet":
        views["size"] = CPU_VIEW_SIZE
    recipe["about"] = f"{name} sized for photos on a CPU: {recipe['backbone']['name']} at {views.get('size')} px"
    return name, recipe


def load_recipe(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not path.suffix:
        path = recipe_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown recipe {name_or_path!r}; valid: {', '.join(list_recipes())}, or a YAML file")
    recipe = read_yaml(path.read_text(encoding="utf-8", errors="replace"), f"recipe {path}") or {}
    if not isinstance(recipe, dict):
        raise ConfigError(f"recipe {path} must be a mapping of settings, not {type(recipe).__name__}")
    return recipe


def resolve(recipe: dict, overrides: dict[str, Any]) -> RunConfig:
    """A recipe plus dotted overrides, checked (:func:`validate`) for a run on this machine."""
    d = yaml.safe_load(yaml.safe_dump(recipe))  # deep copy
    for k, v in overrides.items():
        set_dotted(d, k, v)
    cfg = from_dict(RunConfig, d)
    b = cfg.budget
    if sum(x is not None for x in (b.epochs, b.steps, b.minutes)) != 1:
        raise ConfigError("give exactly one budget: --epochs, --steps or --minutes")
    validate(cfg)
    check_hardware(cfg)
    return cfg


ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "bf16-true", "bf16", "16-mixed", "16-true", "16", "64-true", "64")


def _finite(value: Any, where: str) -> None:
    """Every number anywhere in the config is finite (NaN and infinity are never a setting)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value}")
    if isinstance(value, dict):
        for k, v in value.items():
            _finite(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for v in value:
            _finite(v, where)


def validate(cfg: RunConfig) -> RunConfig:
    """Check the types' ranges of a whole config, so that a bad value stops the run before anything is
    written, with one line that names the key and what it takes."""
    b = cfg.budget
    for name in ("epochs", "steps", "minutes"):
        value = getattr(b, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"--{name} must be positive and finite, got {value}")
    for key, value in to_dict(cfg).items():
        _finite(value, key)
    o, v, d = cfg.optim, cfg.views, cfg.data
    checks: list[tuple[bool, str]] = [
        (o.batch_size >= 2, f"--batch-size must be at least 2, got {o.batch_size}"),
        (o.lr > 0, f"--lr must be positive, got {o.lr}"),
        (o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}"),
        (
            o.weight_decay_end is None or o.weight_decay_end >= 0,
            f"optim.weight_decay_end must be >= 0, got {o.weight_decay_end}",
        ),
        (0 <= o.momentum < 1, f"optim.momentum must be in [0, 1), got {o.momentum}"),
        (
            o.betas is None or (len(o.betas) == 2 and all(0 <= x < 1 for x in o.betas)),
            f"optim.betas must be two numbers in [0, 1), got {o.betas}",
        ),
        (0 <= o.warmup < 1, f"optim.warmup is a fraction of the run in [0, 1), got {o.warmup}"),
        (0 <= o.min_lr <= 1, f"optim.min_lr is a fraction of the peak in [0, 1], got {o.min_lr}"),
        (
            o.clip_grad is None or o.clip_grad > 0,
            f"optim.clip_grad must be positive (or null for none), got {o.clip_grad}",
        ),
        (cfg.checkpoint_every >= 1, f"checkpoint_every must be a positive number of steps, got {cfg.checkpoint_every}"),
        (cfg.log_every >= 1, f"log_every must be a positive number of steps, got {cfg.log_every}"),
        (
            cfg.eval_every_minutes is None or cfg.eval_every_minutes > 0,
            f"--eval-every must be a positive number of minutes, got {cfg.eval_every_minutes}",
        ),
        (0 <= cfg.seed < 2**31, f"--seed must be an integer in [0, 2^31), got {cfg.seed}"),
        (cfg.num_nodes >= 1, f"num_nodes must be at least 1, got {cfg.num_nodes}"),
        (
            cfg.devices == "auto" or isinstance(cfg.devices, int) and cfg.devices >= 1,
            f"--devices takes a positive number of devices or auto, got {cfg.devices!r}",
        ),
        (
            cfg.accelerator in ACCELERATORS,
            f"unknown --accelerator {cfg.accelerator!r}; valid: {', '.join(ACCELERATORS)}",
        ),
        (cfg.precision in PRECISIONS, f"unknown --precision {cfg.precision!r}; valid: {', '.join(PRECISIONS)}"),
        (d.workers >= 0, f"data.workers is a number of decoding processes, 0 or more, got {d.workers}"),
        (
            d.image_size is None or d.image_size >= 1,
            f"data.image_size must be a positive number of pixels, got {d.image_size}",
        ),
        (d.channels in (None, 1, 3), f"data.channels must be 1 or 3, got {d.channels}"),
        (bool(d.name), "data.name must name the data (--data)"),
    ]
    checks += _view_checks(v, "views")
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return cfg


_SIZES = ("_dim", "_depth", "_heads", "_size", "_layers", "_splits", "permutations", "targets", "grid", "per_image")


def check_arguments(fn: Any, args: dict, where: str) -> dict:
    """``args`` for ``fn`` (a method's class, say), converted to the types its signature names and
    checked against the ranges its names imply: sizes and counts at least 1 (0 where 0 is the
    default), temperatures above 0, momenta in [0, 1], other numbers not negative unless the
    default is. Unknown names are left to the caller."""
    import inspect

    params = inspect.signature(fn).parameters
    try:
        hints = typing.get_type_hints(fn.__init__ if inspect.isclass(fn) else fn)
    except Exception:  # noqa: BLE001 - a signature without resolvable hints is taken as it is
        hints = {}
    out = {}
    for name, value in args.items():
        if name not in params:
            out[name] = value
            continue
        key = f"{where}.{name}"
        value = _coerce(value, hints[name], key) if name in hints else value
        default = params[name].default
        default = default if isinstance(default, (int, float)) and not isinstance(default, bool) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _finite(value, key)
            if name.endswith("temp") or name.endswith("temperature"):
                ok, need = value > 0, "above 0"
            elif name == "momentum" or name.endswith("_momentum"):
                ok, need = 0 <= value <= 1, "in [0, 1]"
            elif isinstance(value, int) and name.endswith(_SIZES) and default != 0:
                ok, need = value >= 1, "at least 1"
            else:
                ok, need = value >= 0 or (default is not None and default < 0), "0 or more"
            if not ok:
                raise ConfigError(f"{key} must be {need}, got {value}")
        out[name] = value
    return out


def _view_checks(v: ViewConfig, where: str) -> list[tuple[bool, str]]:
    probabilities = ("hflip", "jitter", "grayscale", "blur", "solarize")
    bad_p = next((p for p in probabilities if not 0 <= getattr(v, p) <= 1), None)
    return [
        (v.size >= 1, f"{where}.size must be a positive number of pixels, got {v.size}"),
        (
            len(v.scale) == 2 and 0 < v.scale[0] <= v.scale[1] <= 1,
            f"{where}.scale is [low, high] with 0 < low <= high <= 1, got {list(v.scale)}",
        ),
        (
            len(v.ratio) == 2 and 0 < v.ratio[0] <= v.ratio[1],
            f"{where}.ratio is [low, high] with 0 < low <= high, got {list(v.ratio)}",
        ),
        (bad_p is None, f"{where}.{bad_p} is a probability in [0, 1], got {getattr(v, bad_p or 'hflip')}"),
        (all(x >= 0 for x in (v.brightness, v.contrast, v.saturation)), f"{where} jitter strengths must be >= 0"),
        (0 <= v.hue <= 0.5, f"{where}.hue must be in [0, 0.5], got {v.hue}"),
        (
            len(v.blur_sigma) == 2 and 0 <= v.blur_sigma[0] <= v.blur_sigma[1],
            f"{where}.blur_sigma is [low, high] with 0 <= low <= high, got {list(v.blur_sigma)}",
        ),
        (
            len(v.mean) == len(v.std) and len(v.mean) in (1, 3),
            f"{where}.mean and .std need 1 or 3 values each, got {list(v.mean)} and {list(v.std)}",
        ),
        (all(x > 0 for x in v.std), f"{where}.std must be positive, got {list(v.std)}"),
    ]


def check_writable(path: str | Path, flag: str = "--out", folder: bool = True) -> Path:
    """That ``path`` can be written (as a folder, or a file when not ``folder``) before any work starts."""
    path = Path(path).expanduser()
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is an existing file; give a folder")
    if not folder and path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file name")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        raise ConfigError(f"{flag} {path}: {existing} is a file, not a folder")
    try:  # a file made and dropped at once: the only test that holds for root and read-only mounts alike
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise ConfigError(
            f"{flag} {path}: cannot write in {existing} ({e.strerror or e}); choose another place"
        ) from None
    return path


def check_hardware(cfg: RunConfig) -> None:
    """The accelerator and the number of devices asked for exist on this machine (torch loads only to ask)."""
    if cfg.accelerator not in ("cuda", "gpu", "mps"):
        return
    import torch

    if cfg.accelerator in ("cuda", "gpu"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--accelerator {cfg.accelerator} needs a CUDA GPU and this machine has none; use cpu or auto"
            )
        if isinstance(cfg.devices, int) and cfg.devices * 1 > torch.cuda.device_count():
            raise ConfigError(f"--devices {cfg.devices} asks for more GPUs than the {torch.cuda.device_count()} here")
    if cfg.accelerator == "mps" and not (torch.backends.mps.is_available()):
        raise ConfigError("--accelerator mps needs an Apple GPU and this machine has none; use cpu or auto")


def parse_labels(spec: str) -> float | int:
    """``"1%"`` -> 0.01 (a fraction of each class), ``"25"`` -> 25 (images per class)."""
    text = str(spec).strip()
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else int(text)
    except ValueError:
        value = -1
    if (isinstance(value, float) and not 0 < value <= 1) or (isinstance(value, int) and value < 1):
        raise ConfigError(
            f"--labels takes a percentage in (0, 100] such as 1% or 10%, or a number of images per "
            f"class such as 10; got {spec!r}"
        )
    return value
