"""The run directory: resolved config, metrics.json, checkpoints, logs; reading and writing them, nothing
else (building a run's backbone is :func:`freelabel.methods.load_backbone`). Every write is atomic."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from .config import RunConfig, from_dict, read_yaml, to_dict
from .errors import RunError

CONFIG, METRICS, CHECKPOINTS, BACKBONE = "config.yaml", "metrics.json", "checkpoints", "backbone.safetensors"


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def save_config(run: Path, cfg: RunConfig) -> None:
    _atomic_write(run / CONFIG, yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())


def load_config(run: Path) -> RunConfig:
    path = Path(run) / CONFIG
    if not path.is_file():
        raise RunError(f"{run} is not a freelabel run directory (no {CONFIG}); give the --out of a pretrain run")
    d = read_yaml(path.read_text())
    return from_dict(RunConfig, d)


def read_metrics(run: Path) -> dict:
    path = Path(run) / METRICS
    return json.loads(path.read_text()) if path.is_file() else {}


def update_metrics(run: Path, section: str, values: dict) -> dict:
    """Merge ``values`` into ``metrics.json[section]`` and rewrite the file atomically."""
    metrics = read_metrics(run)
    metrics.setdefault(section, {}).update(values)
    _atomic_write(Path(run) / METRICS, json.dumps(metrics, indent=2).encode())
    return metrics


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_checkpoint(run: Path, step: int, model_state: dict, train_state: dict, keep: int = 2) -> Path:
    """Write ``checkpoints/step-N/`` (model weights as safetensors, the rest as ``state.pt``) under a
    temporary name, rename it into place, then drop all but the newest ``keep``."""
    root = Path(run) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    save_file(_contiguous(model_state), str(tmp / "model.safetensors"))
    torch.save(train_state, tmp / "state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run: Path) -> Path | None:
    found = sorted((Path(run) / CHECKPOINTS).glob("step-*"))
    return found[-1] if found else None


def load_checkpoint(path: Path) -> tuple[dict, dict]:
    """(model state, training state); ``torch.load`` only with ``weights_only=True``."""
    return load_file(str(path / "model.safetensors")), torch.load(path / "state.pt", weights_only=True)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The weights in a safetensors file, or in a checkpoint folder's ``model.safetensors``."""
    path = Path(path).expanduser()
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise RunError(f"no weights at {path}: give a .safetensors file or a checkpoint folder (RUN/checkpoints/step-N)")
    return load_file(str(file))


def save_artefact(run: Path, name: str, data: bytes) -> None:
    """A file a method leaves in the run directory (colorization's image grid, jigsaw's permutations)."""
    _atomic_write(Path(run) / name, data)


def save_backbone(run: Path, state: dict) -> None:
    tmp = Path(run) / f".{BACKBONE}.tmp"
    save_file(_contiguous(state), str(tmp))
    os.replace(tmp, Path(run) / BACKBONE)


def load_backbone_state(run: Path) -> dict[str, torch.Tensor]:
    """The trained backbone: ``backbone.safetensors``, or the newest checkpoint of an unfinished run."""
    run = Path(run)
    if (run / BACKBONE).is_file():
        return load_file(str(run / BACKBONE))
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise RunError(f"{run} has no trained weights yet ({BACKBONE} or {CHECKPOINTS}/)")
    state = load_file(str(ckpt / "model.safetensors"))
    return {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}


def file_logger(run: Path) -> logging.Handler:
    handler = logging.FileHandler(Path(run) / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    return handler
