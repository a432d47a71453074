"""Methods side by side: each trained on the same data at the same budget, seed and data order, one
after another, then scored alike and put on a leaderboard (``leaderboard.md``, ``.csv``, ``.html``).

Every method trains in a fresh process, so that its peak memory is its own and nothing carries over
from the one before. A method that has finished (trained, evaluated, reported) is not run again; one
that was interrupted continues from its last checkpoint.
"""

from __future__ import annotations

import csv
import io
import logging
import multiprocessing
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import RunConfig, default_recipe, list_recipes, load_recipe, resolve
from .errors import ConfigError
from .evaluate import Protocol, compared
from .run import BACKBONE, CONFIG, latest_checkpoint, load_config, read_metrics, update_metrics

log = logging.getLogger("freelabel")
RANKED_BY = "knn_top1_k20"  # the leaderboard's order: k-NN, the protocol every method is scored by


def columns(protocols: dict[str, Protocol]) -> tuple[list[str], dict[str, str]]:
    """The leaderboard's columns (the protocols' own, then fine-tuning's and the run's) and their headings."""
    scores = [c for p in protocols.values() for c in p.columns]
    names = ["rank", "name", "method", "recipe", "backbone", *(c.name for c in scores), "finetune_top1"]
    names += ["steps", "epochs", "train_minutes", "images_per_s", "peak_memory_mb", "final_loss", "status", "error"]
    labels = {c.name: c.label for c in scores} | {
        "finetune_top1": "fine-tuned",
        "train_minutes": "minutes",
        "images_per_s": "images/s",
        "peak_memory_mb": "peak MB",
        "final_loss": "final loss",
    }
    return names, labels


@dataclass
class Entry:
    """One method of the comparison: its run folder's name and its resolved config."""

    name: str
    cfg: RunConfig


def expand(specs: list[str], data: str) -> list[str]:
    """``["all"]``: every recipe made for ``data`` (``METHOD-DATA``, and variants such as ``dinov2-gram-DATA``)."""
    if specs != ["all"]:
        return specs
    found = [r for r in list_recipes() if r.endswith(f"-{data}")]
    if not found:
        raise ConfigError(f"no recipe is made for {data}, so `all` means nothing there; name the methods")
    methods = {r: load_recipe(r).get("method", r.removesuffix(f"-{data}")) for r in found}
    return [m if r == f"{m}-{data}" else f"{m}:{r}" for r, m in methods.items()]


def plan(
    specs: list[str],
    data: str,
    budget: dict[str, float | None],
    seed: int = 0,
    eval_every: float | None = None,
    overrides: dict[str, Any] | None = None,
) -> list[Entry]:
    """Resolve ``METHOD`` or ``METHOD:RECIPE`` specs (or ``all``) into configs (each method's recipe for ``data``
    unless one is named), all with the same data, budget and seed. Bad specs fail here, before any run."""
    from .methods import METHODS

    entries = []
    for spec in expand(specs, data):
        method, _, recipe = spec.partition(":")
        if method not in METHODS:
            raise ConfigError(f"unknown method {method!r} in {spec!r}; valid: {', '.join(METHODS)}")
        name = recipe or default_recipe(method, data)
        d = load_recipe(name)
        d["recipe"] = name
        fixed = {
            "method": method,
            "data.name": data,
            "seed": seed,
            "eval_every_minutes": eval_every,
            **{f"budget.{k}": v for k, v in budget.items()},
        }
        stem = Path(recipe).stem
        label = method if not recipe else stem if stem.startswith(method) else f"{method}-{stem}"
        entries.append(Entry(label, resolve(d, {**fixed, **(overrides or {})})))
    names = [e.name for e in entries]
    if len(set(names)) < len(names):
        raise ConfigError(f"{max(names, key=names.count)} is named twice; give each method once (or METHOD:RECIPE)")
    return entries


def _check_existing(entry: Entry, run: Path) -> None:
    """A run folder left by an earlier comparison must have been started with the same settings."""
    if not (run / CONFIG).is_file():
        return
    old = load_config(run)
    for what in ("budget", "seed"):
        if getattr(old, what) != getattr(entry.cfg, what):
            raise ConfigError(f"{run} was started with another {what} ({getattr(old, what)}); choose another --out")
    if old.data.name != entry.cfg.data.name or old.method != entry.cfg.method:
        raise ConfigError(f"{run} holds {old.method} on {old.data.name}; choose another --out")


def _finetune_key(labels: str, seed: int) -> str:
    from .evaluate.finetune import result_key

    return result_key(labels, "trained", seed)


def finished(run: Path, finetune: str | None = None, protocols: dict[str, Protocol] | None = None) -> bool:
    m = read_metrics(run)
    scored = m.get("compare", {}).get("scored", [])
    if "resources" not in m or not set(protocols or compared()) <= set(scored) or not (run / "report.html").is_file():
        return False
    return finetune is None or _finetune_key(finetune, load_config(run).seed) in m.get("finetune", {})


def run_one(
    cfg: RunConfig, run: Path, finetune: str | None = None, protocols: dict[str, Protocol] | None = None
) -> None:
    """Train (or continue), record peak memory, score with each of ``protocols`` (default: those of the
    registry that ``compare`` runs: k-NN next to random init and raw pixels, the linear probe) and, given
    ``finetune`` (labels: ``1%``, ``10%``, a number per class), fine-tuning at its default budget; write the
    report. Each stage is skipped when its result is already in the run folder."""
    import shutil

    import torch

    from .engine import pretrain
    from .evaluate import load
    from .evaluate.finetune import finetune as fine_tune
    from .report import make_report

    run = Path(run)
    metrics = read_metrics(run)
    if not ((run / BACKBONE).is_file() and "pretrain" in metrics):
        resume = latest_checkpoint(run) is not None
        if not resume and run.exists():  # stopped before its first checkpoint: nothing to keep
            shutil.rmtree(run)
        pretrain(load_config(run) if resume else cfg, run, resume=resume)
        peak = {"peak_rss_mb": peak_rss_mb()}
        if torch.cuda.is_available():
            peak["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        update_metrics(run, "resources", peak)
    for name, protocol in (protocols or compared()).items():
        if name not in read_metrics(run).get("compare", {}).get("scored", []):
            load(protocol.function)(run, **protocol.compare)
            scored = read_metrics(run).get("compare", {}).get("scored", [])
            update_metrics(run, "compare", {"scored": [*scored, name], "failed": None})
    metrics = read_metrics(run)
    if finetune is not None and _finetune_key(finetune, cfg.seed) not in metrics.get("finetune", {}):
        fine_tune(run, labels=finetune, seed=cfg.seed)
    make_report(run)


def peak_rss_mb() -> float:
    """This process's peak resident memory: Linux's VmHWM (``ru_maxrss`` would include the peak of the
    parent that forked it), elsewhere ``ru_maxrss``."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        scale = 2**20 if sys.platform == "darwin" else 2**10  # bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def _child(cfg: RunConfig, run: str, finetune: str | None, protocols: dict[str, Protocol]) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")  # a fresh process: as the CLI logs
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    try:
        run_one(cfg, Path(run), finetune, protocols)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # the comparison goes on with the next method; this one is retried next time
        print(f"freelabel: compare: {Path(run).name} failed: {type(e).__name__}: {e}", file=sys.stderr)
        Path(run).mkdir(parents=True, exist_ok=True)
        update_metrics(Path(run), "compare", {"failed": f"{type(e).__name__}: {e}"})
        sys.exit(1)


def compare(
    specs: list[str],
    data: str = "fashion-mnist",
    out: str | Path = "compare",
    minutes: float | None = None,
    steps: int | None = None,
    epochs: float | None = None,
    seed: int = 0,
    eval_every: float | None = None,
    overrides: dict[str, Any] | None = None,
    finetune: str | None = None,
    record: str | Path | None = None,
) -> list[dict]:
    """Run every method of ``specs`` in turn into ``OUT/NAME``, writing the leaderboard after each; return
    its rows. With a minutes budget the online k-NN runs every fifth of it unless ``eval_every`` says
    otherwise. ``finetune`` (labels, e.g. ``10%``) also fine-tunes each run on that share of the labels.
    Stopped (Ctrl-C), it writes the leaderboard of the methods done and says where it stopped. ``record``:
    a results file (``results/leaderboard.jsonl``) that each finished method's scores are appended to."""
    if sum(x is not None for x in (minutes, steps, epochs)) != 1:
        raise ConfigError("give exactly one budget: --minutes, --steps or --epochs")
    if eval_every is None and minutes:
        eval_every = minutes / 5
    entries = plan(specs, data, {"minutes": minutes, "steps": steps, "epochs": epochs}, seed, eval_every, overrides)
    out = Path(out)
    for entry in entries:
        _check_existing(entry, out / entry.name)
    out.mkdir(parents=True, exist_ok=True)
    spawn = multiprocessing.get_context("spawn")
    protocols = compared()  # decided here, sent to each method's process
    for i, entry in enumerate(entries, 1):
        run = out / entry.name
        if finished(run, finetune, protocols):
            log.info("[%d/%d] %s: finished earlier, not run again", i, len(entries), entry.name)
            continue
        log.info("[%d/%d] %s (recipe %s) into %s", i, len(entries), entry.name, entry.cfg.recipe, run)
        started = time.perf_counter()
        child = spawn.Process(target=_child, args=(entry.cfg, str(run), finetune, protocols))
        child.start()
        try:
            child.join()
        except KeyboardInterrupt:  # the terminal sent it to the child too: it saves and stops
            child.join()
            write_leaderboard(out, leaderboard_rows(out, entries, finetune, protocols), entries, finetune, protocols)
            log.warning(
                "stopped during %s (%d of %d); the leaderboard holds the methods done: run the same command "
                "to continue from there",
                entry.name,
                i,
                len(entries),
            )
            raise
        log.info(
            "[%d/%d] %s: %s after %.1f min",
            i,
            len(entries),
            entry.name,
            "done" if child.exitcode == 0 else f"failed (exit {child.exitcode})",
            (time.perf_counter() - started) / 60,
        )
        write_leaderboard(out, leaderboard_rows(out, entries, finetune, protocols), entries, finetune, protocols)
    if record is not None:  # every finished method, also those of an earlier call (a row is never added twice)
        from .results import record as append

        done = [e for e in entries if finished(out / e.name, finetune, protocols)]
        added = append(record, [row for e in done for row in result_rows(out / e.name, e, finetune, protocols)])
        log.info("%d rows added to %s", added, record)
    rows = leaderboard_rows(out, entries, finetune, protocols)
    write_leaderboard(out, rows, entries, finetune, protocols)
    return rows


def _at(section: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        section = section.get(key, {}) if isinstance(section, dict) else {}
    return section if not isinstance(section, dict) else None


def _row(run: Path, entry: Entry, finetune: str | None, protocols: dict[str, Protocol]) -> dict:
    m = read_metrics(run)
    p, res = m.get("pretrain", {}), m.get("resources", {})
    done = finished(run, finetune, protocols)
    failed = None if done else m.get("compare", {}).get("failed")  # a retry that succeeded clears it
    cfg = entry.cfg
    return {
        "name": entry.name,
        "method": cfg.method,
        "recipe": cfg.recipe,
        "backbone": cfg.backbone.name,
        **{c.name: _at(m.get(name, {}), c.path) for name, protocol in protocols.items() for c in protocol.columns},
        "finetune_top1": m.get("finetune", {}).get(_finetune_key(finetune, cfg.seed), {}).get("top1")
        if finetune
        else None,
        "steps": p.get("steps"),
        "epochs": p.get("epochs"),
        "train_minutes": p.get("train_minutes"),
        "images_per_s": p.get("images_per_s"),
        "peak_memory_mb": res.get("peak_gpu_mb", res.get("peak_rss_mb")),
        "final_loss": p.get("final_loss"),
        "status": "done" if done else "failed" if failed else "not finished",
        "error": failed,
    }


def budget_text(cfg: RunConfig) -> str:
    b = cfg.budget
    return f"{b.minutes:g} minutes" if b.minutes else f"{b.steps} steps" if b.steps else f"{b.epochs:g} epochs"


def result_rows(run: Path, entry: Entry, finetune: str | None, protocols: dict[str, Protocol]) -> list[dict]:
    """A finished method's figures as rows of the results table ``leaderboard`` (:mod:`freelabel.results`)."""
    from .config import to_dict
    from .results import config_hash

    m, cfg = read_metrics(run), entry.cfg
    p, knn = m.get("pretrain", {}), m.get("knn", {})
    base = {
        "table": "leaderboard",
        "data": cfg.data.name,
        "budget": budget_text(cfg),
        "method": cfg.method,
        "recipe": cfg.recipe,
        "config": config_hash(to_dict(cfg)),
        "seed": cfg.seed,
        "steps": p.get("steps"),
        "images_seen": p.get("images_seen"),
        "precision": p.get("precision"),
        "baselines": {k: knn.get(k, {}).get("top1_k20") for k in ("random_init", "raw_pixels")},
        "source": str(run.resolve()),
    }
    scores = [
        (name, c.name, c.label, _at(m.get(name, {}), c.path)) for name, pr in protocols.items() for c in pr.columns
    ]
    if finetune:
        tuned = m.get("finetune", {}).get(_finetune_key(finetune, cfg.seed), {}).get("top1")
        scores.append(("finetune", "finetune_top1", f"fine-tuned ({finetune} labels)", tuned))
    scores += [
        ("pretrain", "steps", "steps", p.get("steps")),
        ("pretrain", "images_per_s", "images/s", p.get("images_per_s")),
    ]
    return [base | {"protocol": pr, "metric": n, "heading": h, "value": v} for pr, n, h, v in scores if v is not None]


def leaderboard_rows(
    out: Path, entries: list[Entry], finetune: str | None = None, protocols: dict[str, Protocol] | None = None
) -> list[dict]:
    """One row per method, best k-NN first."""
    rows = [_row(out / e.name, e, finetune, protocols or compared()) for e in entries]
    rows.sort(key=lambda r: -(r.get(RANKED_BY) if r.get(RANKED_BY) is not None else -1))
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    return rows


def _cell(v: Any, digits: int = 2) -> str:
    if v is None:
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def write_leaderboard(
    out: Path,
    rows: list[dict],
    entries: list[Entry],
    finetune: str | None = None,
    protocols: dict[str, Protocol] | None = None,
) -> None:
    """``leaderboard.md``, ``leaderboard.csv`` and ``leaderboard.html`` (all curves on one plot, links
    to each run's report)."""
    from .files import write_text
    from .report import data_uri, environment, render
    from .report.figures import leaderboard_curves

    cfg = entries[0].cfg
    budget = budget_text(cfg)
    env = environment()
    setting = (
        f"{cfg.data.name}, {budget} each, seed {cfg.seed}; {env['cpu']}, GPU: {env['gpu']}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    raw = next(
        (
            read_metrics(out / r["name"]).get("knn", {}).get("raw_pixels", {}).get("top1_k20")
            for r in rows
            if "raw_pixels" in read_metrics(out / r["name"]).get("knn", {})
        ),
        None,
    )

    names, labels = columns(protocols or compared())
    shown = [c for c in names if c not in ("method", "error") and (c != "finetune_top1" or finetune)]
    heads = [labels.get(c, c) + (f" ({finetune} labels)" if c == "finetune_top1" else "") for c in shown]
    errors = [f"{r['name']} failed: {r['error']}" for r in rows if r["error"]]
    md = [f"# Leaderboard: {setting}", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(shown)]
    md += ["| " + " | ".join(_cell(r[c]) for c in shown) + " |" for r in rows]
    if raw is not None:
        md += [
            "",
            f"Raw pixels (k-NN top-1, k=20): {raw:.2f}%. k-NN: weighted, on frozen pooled features, full train and test splits.",
        ]
    md += [""] + [f"- {e}" for e in errors] if errors else []
    write_text(out / "leaderboard.md", "\n".join(md) + "\n")

    buf = io.StringIO()
    writer = csv.DictWriter(buf, names, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "leaderboard.csv", buf.getvalue())

    curves = {}
    for r in rows:
        m = read_metrics(out / r["name"])
        points = [(p["minutes"], p["top1_k20"]) for p in m.get("pretrain", {}).get("knn_curve", [])]
        if r.get(RANKED_BY) is not None and r["train_minutes"] is not None:
            points.append((r["train_minutes"], r[RANKED_BY]))
        curves[r["name"]] = sorted(set(points))
    table = [[_cell(r[c]) for c in shown] for r in rows]
    links = [f"{r['name']}/report.html" if (out / r["name"] / "report.html").is_file() else None for r in rows]
    html = render(
        {
            "setting": setting,
            "columns": heads,
            "rows": list(zip(table, links)),
            "raw_pixels": raw,
            "errors": errors,
            "curves": data_uri(leaderboard_curves(curves, raw)),
        },
        "leaderboard.html.j2",
    )
    write_text(out / "leaderboard.html", html)
