"""The run directory: resolved config, metrics.json, checkpoints, logs; reading and writing them, nothing
else (building a run's backbone is :func:`freelabel.methods.load_backbone`). Every write goes through
:mod:`freelabel.files`: whole or not at all."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import struct
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from . import files
from .config import RunConfig, from_dict, read_yaml, to_dict, validate
from .errors import RunError

CONFIG, METRICS, CHECKPOINTS, BACKBONE = "config.yaml", "metrics.json", "checkpoints", "backbone.safetensors"
log = logging.getLogger("freelabel")


class UnsafeCheckpoint(RunError):
    """A checkpoint holding a pickle that could run code: not damage to pass over, but a file to refuse."""


def save_config(run: Path, cfg: RunConfig) -> None:
    files.write_text(run / CONFIG, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_config(run: Path) -> RunConfig:
    path = Path(run) / CONFIG
    if not path.is_file():
        raise RunError(f"{run} is not a freelabel run directory (no {CONFIG}); give the --out of a pretrain run")
    d = read_yaml(path.read_text(encoding="utf-8", errors="replace"), str(path))
    if not isinstance(d, dict):
        raise RunError(f"{path} is not a run's settings (a YAML mapping); it was changed by hand or damaged")
    return validate(from_dict(RunConfig, d))


def read_metrics(run: Path) -> dict:
    path = Path(run) / METRICS
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise RunError(f"{path} is not valid JSON; move it aside and run the command again") from None


def update_metrics(run: Path, section: str, values: dict) -> dict:
    """Merge ``values`` into ``metrics.json[section]`` and rewrite the file atomically."""
    metrics = read_metrics(run)
    metrics.setdefault(section, {}).update(values)
    files.write_json(Path(run) / METRICS, metrics, indent=2)
    return metrics


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def _nbytes(obj) -> int:
    """The bytes of the tensors in ``obj`` (nested dicts and lists), plus a little for what pickles them."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(map(_nbytes, obj.values())) + 64 * len(obj)
    if isinstance(obj, list | tuple):
        return sum(map(_nbytes, obj)) + 8 * len(obj)
    return len(obj) if isinstance(obj, str | bytes) else 16


def check_room(run: Path, model_state: dict[str, torch.Tensor]) -> None:
    """Refuse to start training where not even one checkpoint of the model's weights would fit."""
    files.check_space(Path(run), _nbytes(model_state), "the checkpoints", "free some space or choose another --out")


def resume_hint(run: Path) -> str:
    return f"`freelabel pretrain --resume {run}`"


def save_checkpoint(run: Path, step: int, model_state: dict, train_state: dict, keep: int = 2) -> Path:
    """Write ``checkpoints/step-N/`` (model weights as safetensors, the rest as ``state.pt``) whole or not
    at all (:func:`freelabel.files.atomic_folder`: a step saved before is swapped out only once the new one
    is complete), then drop all but the newest ``keep``. Each file is written straight to the disk, not
    serialised in memory first; the free space is checked against the checkpoint's size beforehand."""
    root = Path(run) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    tidy_run(run)
    final = root / f"step-{step:08d}"
    weights = _contiguous(model_state)
    previous = latest_checkpoint(run)
    kept = f"{previous.name} is intact" if previous else "there is no earlier checkpoint"
    advice = f"{kept}; free some space, then continue with {resume_hint(run)}"
    with files.atomic_folder(final, _nbytes(weights) + _nbytes(train_state), advice) as tmp:
        save_file(weights, str(tmp / "model.safetensors"))
        torch.save(train_state, tmp / "state.pt")
    for old in checkpoints(run)[keep:]:
        shutil.rmtree(old)
    return final


def tidy_run(run: Path) -> None:
    """Clean up after a run killed while saving: delete half-written files and checkpoints, and put back a
    replaced checkpoint whose replacement never arrived. Only the process that writes the run may call this."""
    files.remove_stale(run)
    root = Path(run) / CHECKPOINTS
    if root.is_dir():
        files.remove_stale(root)
        for aside in root.glob(files.ASIDE + "step-*"):
            files.recover(aside.with_name(aside.name.removeprefix(files.ASIDE)))


def _steps(root: Path) -> list[Path]:
    """Checkpoint folders newest first (a replaced one still aside counts while its step is missing)."""
    found = {p.name: p for p in root.glob("step-[0-9]*")}
    for aside in root.glob(files.ASIDE + "step-[0-9]*"):
        found.setdefault(aside.name.removeprefix(files.ASIDE), aside)
    return [found[name] for name in sorted(found, reverse=True)]


def _complete(ckpt: Path) -> bool:
    """Both files present and whole: the safetensors header and data add up to the file's size, and the
    zip archive of ``state.pt`` has its central directory (written last)."""
    weights, state = ckpt / "model.safetensors", ckpt / "state.pt"
    try:
        with open(weights, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if weights.stat().st_size != 8 + n + end:
            return False
        with zipfile.ZipFile(state) as z:
            return bool(z.namelist())
    except (OSError, ValueError, KeyError, TypeError, struct.error, zipfile.BadZipFile):
        return False


def checkpoints(run: Path) -> list[Path]:
    """The run's complete checkpoints, newest first; incomplete ones (a run killed while writing one by an
    older freelabel, a damaged disk) are passed over with a warning."""
    good = []
    for ckpt in _steps(Path(run) / CHECKPOINTS):
        if _complete(ckpt):
            good.append(ckpt)
        else:
            log.warning("passing over %s: it is incomplete", ckpt)
    return good


def latest_checkpoint(run: Path) -> Path | None:
    """The newest complete checkpoint of ``run``, or None."""
    found = checkpoints(run)
    return found[0] if found else None


def load_checkpoint(path: Path) -> tuple[dict, dict]:
    """(model state, training state); ``torch.load`` only with ``weights_only=True``."""
    try:
        return load_file(str(path / "model.safetensors")), load_state(path / "state.pt")
    except RunError:
        raise
    except Exception as e:  # a damaged file fails in safetensors, zip or unpickling, each in its own way
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise RunError(f"checkpoint {path} cannot be read ({type(e).__name__}: {first})") from None


def load_latest_checkpoint(run: Path) -> tuple[Path, dict, dict] | None:
    """(path, model state, training state) of the newest checkpoint that loads, or None if none does."""
    for ckpt in checkpoints(run):
        try:
            return ckpt, *load_checkpoint(ckpt)
        except UnsafeCheckpoint:
            raise
        except RunError as e:
            log.warning("%s; trying the one before", e)
    return None


def has_results(run: Path) -> bool:
    """Whether ``run`` holds anything a new run must not overwrite: a checkpoint, weights or metrics."""
    run = Path(run)
    return (run / BACKBONE).exists() or (run / METRICS).exists() or latest_checkpoint(run) is not None


def load_state(path: Path) -> dict:
    """A training state file, as plain tensors and numbers: a pickle that would build any other object
    (and could run code) is refused with a RunError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note on pickle protocols: the refusal below says it all
        try:
            return torch.load(path, weights_only=True)
        except pickle.UnpicklingError as e:
            culprit = next((line.strip() for line in str(e).splitlines() if "Unsupported global" in line), "")
            raise UnsafeCheckpoint(
                f"refused to load {path}: it is not plain tensors and numbers but a pickle that could run "
                f"code{f' ({culprit})' if culprit else ''}; only load checkpoints you made"
            ) from None


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The weights in a safetensors file, or in a checkpoint folder's ``model.safetensors``."""
    path = Path(path).expanduser()
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise RunError(
            f"no weights at {path}: give a .safetensors file or a checkpoint folder (RUN/checkpoints/step-N)"
        )
    return load_file(str(file))


def save_artefact(run: Path, name: str, data: bytes) -> None:
    """A file a method leaves in the run directory (colorization's image grid, jigsaw's permutations)."""
    files.write_bytes(Path(run) / name, data)


def save_backbone(run: Path, state: dict) -> None:
    state = _contiguous(state)
    with files.atomic_file(Path(run) / BACKBONE, _nbytes(state)) as tmp:
        save_file(state, str(tmp))


def load_backbone_state(run: Path) -> dict[str, torch.Tensor]:
    """The trained backbone: ``backbone.safetensors``, or the newest checkpoint of an unfinished run."""
    run = Path(run)
    if (run / BACKBONE).is_file():
        try:
            return load_file(str(run / BACKBONE))
        except Exception as e:  # a damaged file: the final checkpoint holds the same weights
            log.warning("%s cannot be read (%s); using the newest checkpoint", run / BACKBONE, type(e).__name__)
    found = load_latest_checkpoint(run)
    if found is None:
        raise RunError(f"{run} has no trained weights yet ({BACKBONE} or {CHECKPOINTS}/)")
    state = found[1]
    return {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}


class _LogFile(logging.FileHandler):
    """``log.txt``; a line that cannot be written (a full disk) is dropped rather than printed as a traceback."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


@contextmanager
def logging_to(run: Path) -> Iterator[None]:
    """Append freelabel's log to ``RUN/log.txt`` while the block runs."""
    handler = _LogFile(Path(run) / "log.txt", errors="backslashreplace")  # non-UTF-8 file names as escapes
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()
