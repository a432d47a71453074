"""Run configuration: YAML recipes, command-line overrides, and checks with clear messages."""

from __future__ import annotations

import dataclasses
import re
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
    workers: int = 2  # decoding processes for image folders


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
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.inf|\.Inf|\.INF|\.nan|\.NaN|\.NAN)$"),  # fmt: skip
    list("-+0123456789."),
)


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=0.1"`` -> ``("optim.lr", 0.1)``; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set takes KEY=VALUE (for example optim.lr=0.1), got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip(), read_yaml(raw)


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
    name = next((f"{method}-{d}" for d in ("emoji", "emoji-captions", "fashion-mnist")
                 if f"{method}-{d}" in list_recipes()), None)  # fmt: skip
    if name is None:
        return None
    recipe, paper = load_recipe(name), load_recipe(method)
    views = recipe.setdefault("views", {})
    if name.endswith("fashion-mnist"):
        views.update({k: v for k, v in paper.get("views", {}).items() if k in ("saturation", "hue", "grayscale", "mean", "std")})
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
    return read_yaml(path.read_text()) or {}


def resolve(recipe: dict, overrides: dict[str, Any]) -> RunConfig:
    """A recipe plus dotted overrides, checked."""
    d = yaml.safe_load(yaml.safe_dump(recipe))  # deep copy
    for k, v in overrides.items():
        set_dotted(d, k, v)
    cfg = from_dict(RunConfig, d)
    b = cfg.budget
    if sum(x is not None for x in (b.epochs, b.steps, b.minutes)) != 1:
        raise ConfigError("give exactly one budget: --epochs, --steps or --minutes")
    for name in ("epochs", "steps", "minutes"):
        value = getattr(b, name)
        if value is not None and value <= 0:
            raise ConfigError(f"--{name} must be positive, got {value}")
    if cfg.optim.batch_size < 2:
        raise ConfigError(f"--batch-size must be at least 2, got {cfg.optim.batch_size}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"--lr must be positive, got {cfg.optim.lr}")
    return cfg
