"""The run directory: resolved config, metrics.json, checkpoints, logs; reading and writing them, nothing
else (building a run's backbone is :func:`freelabel.methods.load_backbone`). Every write is atomic."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import pickle
import shutil
import struct
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from .config import RunConfig, from_dict, read_yaml, to_dict, validate
from .errors import RunError

CONFIG, METRICS, CHECKPOINTS, BACKBONE = "config.yaml", "metrics.json", "checkpoints", "backbone.safetensors"
log = logging.getLogger("freelabel")


class DiskFullError(RunError):
    """No room on the device for a file of the run; what was there before is intact."""


class UnsafeCheckpoint(RunError):
    """A checkpoint holding a pickle that could run code: not damage to pass over, but a file to refuse."""


def _fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _no_space(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} bytes"


def _check_space(folder: Path, needed: int, what: str, advice: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DiskFullError(
            f"no space for {what} in {folder}: it needs {_size(needed)}, {_size(free)} are free; {advice}"
        )


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: a synced temporary file renamed over it, the rename synced."""
    path = Path(path)
    advice = "free some space and run the command again"
    _check_space(path.parent, len(data), path.name, advice)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        _write_synced(Path(tmp), data)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if _no_space(e):
            raise DiskFullError(f"no space left in {path.parent} for {path.name}; {advice}") from None
        raise
    _fsync_dir(path.parent)


def save_config(run: Path, cfg: RunConfig) -> None:
    _atomic_write(run / CONFIG, yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())


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
    _atomic_write(Path(run) / METRICS, json.dumps(metrics, indent=2).encode())
    return metrics


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def check_room(run: Path, model_state: dict[str, torch.Tensor]) -> None:
    """Refuse to start training where not even one checkpoint of the model's weights would fit."""
    needed = sum(t.numel() * t.element_size() for t in model_state.values())
    _check_space(Path(run), needed, "the checkpoints", "free some space or choose another --out")


def resume_hint(run: Path) -> str:
    return f"`freelabel pretrain --resume {run}`"


def save_checkpoint(run: Path, step: int, model_state: dict, train_state: dict, keep: int = 2) -> Path:
    """Write ``checkpoints/step-N/`` (model weights as safetensors, the rest as ``state.pt``) whole or not
    at all, then drop all but the newest ``keep``.

    The files are written and synced in a temporary folder, which is renamed into place; a step saved
    before is first renamed aside and deleted only once the new one is in. Free space is checked against
    the checkpoint's size before anything is written."""
    root = Path(run) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    tidy_run(run)
    final = root / f"step-{step:08d}"
    weights = save_safetensors(_contiguous(model_state))
    buffer = io.BytesIO()
    torch.save(train_state, buffer)
    state = buffer.getvalue()
    previous = latest_checkpoint(run)
    kept = f"{previous.name} is intact" if previous else "there is no earlier checkpoint"
    advice = f"{kept}; free some space, then continue with {resume_hint(run)}"
    _check_space(root, len(weights) + len(state), f"checkpoint {final.name}", advice)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f"{_TMP}{final.name}-"))
    try:
        _write_synced(tmp / "model.safetensors", weights)
        _write_synced(tmp / "state.pt", state)
        _fsync_dir(tmp)
        _replace_dir(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if _no_space(e):
            raise DiskFullError(f"no space left in {root} for checkpoint {final.name}; {advice}") from None
        raise
    for old in checkpoints(run)[keep:]:
        shutil.rmtree(old)
    return final


_TMP, _OLD = ".tmp-", ".old-"  # a checkpoint being written; a replaced one not yet deleted


def _replace_dir(new: Path, final: Path) -> None:
    """Rename ``new`` to ``final``; an existing ``final`` is renamed aside first and deleted last, so
    that at every moment one complete copy of the step is on disk under a name :func:`checkpoints` reads."""
    aside = final.with_name(_OLD + final.name)
    if final.exists():
        os.replace(final, aside)
        _fsync_dir(final.parent)
    os.replace(new, final)
    _fsync_dir(final.parent)
    if aside.exists():
        shutil.rmtree(aside)


def tidy_run(run: Path) -> None:
    """Clean up after a run killed while saving: delete half-written files and checkpoints, and put back a
    replaced checkpoint whose replacement never arrived. Only the process that writes the run may call this."""
    for path in Path(run).glob(".*.tmp"):
        path.unlink(missing_ok=True)
    root = Path(run) / CHECKPOINTS
    for path in root.glob(_TMP + "*"):
        shutil.rmtree(path, ignore_errors=True)
    for aside in root.glob(_OLD + "step-*"):
        final = aside.with_name(aside.name.removeprefix(_OLD))
        if final.exists():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(aside, final)
            _fsync_dir(root)


def _steps(root: Path) -> list[Path]:
    """Checkpoint folders newest first (a replaced one still aside counts while its step is missing)."""
    found = {p.name: p for p in root.glob("step-[0-9]*")}
    for aside in root.glob(_OLD + "step-[0-9]*"):
        found.setdefault(aside.name.removeprefix(_OLD), aside)
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
    _atomic_write(Path(run) / name, data)


def save_backbone(run: Path, state: dict) -> None:
    _atomic_write(Path(run) / BACKBONE, save_safetensors(_contiguous(state)))


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


def file_logger(run: Path) -> logging.Handler:
    handler = _LogFile(Path(run) / "log.txt", errors="backslashreplace")  # non-UTF-8 file names, not a traceback
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    return handler
