"""The report's pictures, drawn with matplotlib's object API (no pyplot state) and returned as PNG bytes."""

from __future__ import annotations

import io

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnnotationBbox, OffsetImage
from matplotlib.ticker import FuncFormatter, MaxNLocator

COLOURS = "tab10"


def png(fig: Figure, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _picture(image: np.ndarray) -> np.ndarray:
    """``uint8 [C, H, W]`` -> what ``imshow`` takes: ``[H, W]`` for grey, ``[H, W, 3]`` for colour."""
    return image[0] if image.shape[0] == 1 else image[:3].transpose(1, 2, 0)


def _smooth(values: np.ndarray, weight: float = 0.9) -> np.ndarray:
    """An exponential moving average, as TensorBoard's smoothing slider draws it."""
    out, acc = np.empty_like(values), values[0]
    for i, v in enumerate(values):
        acc = weight * acc + (1 - weight) * v
        out[i] = acc
    return out


def curves(
    scalars: dict[str, tuple[np.ndarray, np.ndarray]],
    clock: tuple[np.ndarray, np.ndarray],
    baselines: dict[str, dict[str, float]],
) -> bytes:
    """One panel per scalar against the step (bottom axis) and training minutes (top axis; ``clock`` maps
    steps to minutes); ``baselines[panel]`` are dashed lines on that panel."""
    names = list(scalars)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(4.6 * cols, 3.1 * rows), layout="constrained")
    steps_at, minutes_at = clock
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        x, y = scalars[name]
        many = len(y) > 30 and not name.startswith("k-NN")
        ax.plot(x, y, color="C0", alpha=0.3 if many else 1.0, lw=1, marker=None if many else "o", ms=3)
        if many:
            ax.plot(x, _smooth(y), color="C0", lw=1.6)
        for j, (label, value) in enumerate(baselines.get(name, {}).items()):
            ax.axhline(value, ls="--", lw=1, color=f"C{j + 1}", label=f"{label} {value:.1f}%")
        if baselines.get(name):
            ax.legend(fontsize=8, loc="best")
        if name == "learning rate":
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.1e}"))  # no offset text under the top axis
        ax.set_xlim(0, steps_at[-1] * 1.02)  # every panel spans the whole run, however few points it has
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        top = ax.secondary_xaxis(
            "top",
            functions=(lambda s: np.interp(s, steps_at, minutes_at), lambda m: np.interp(m, minutes_at, steps_at)),
        )
        top.set_xticks(_minute_ticks(steps_at, minutes_at))
        top.set_xlabel("training minutes", fontsize=8)
        top.tick_params(labelsize=8)
    return png(fig)


def _minute_ticks(steps_at: np.ndarray, minutes_at: np.ndarray, gap: float = 0.08) -> list[float]:
    """Round minute values for the top axis, dropping those that the (uneven) clock would crowd together."""
    kept: list[float] = []
    for m in MaxNLocator(6).tick_values(0, minutes_at[-1]):
        at = np.interp(m, minutes_at, steps_at) / steps_at[-1]
        if 0 <= m <= minutes_at[-1] and (
            not kept or at - np.interp(kept[-1], minutes_at, steps_at) / steps_at[-1] >= gap
        ):
            kept.append(float(m))
    return kept


def embedding_map(
    xy: np.ndarray, labels: np.ndarray, shown: list[int], images: np.ndarray, classes: list[str]
) -> bytes:
    """The 2-D map coloured by class, with the pictures ``images`` of the points ``shown``."""
    fig = Figure(figsize=(9, 7.5), layout="constrained")
    ax = fig.add_subplot()
    n_classes = int(labels.max()) + 1
    cmap = COLOURS if n_classes <= 10 else "tab20"
    for c in range(n_classes):
        at = labels == c
        name = classes[c] if c < len(classes) else str(c)
        ax.scatter(xy[at, 0], xy[at, 1], s=6, alpha=0.7, color=colormaps[cmap](c % 20), label=name, linewidths=0)
    for i, image in zip(shown, images):
        box = OffsetImage(_picture(image), zoom=28 / images.shape[-1] * 1.1, cmap="gray")
        colour = colormaps[cmap](int(labels[i]) % 20)
        ax.add_artist(AnnotationBbox(box, xy[i], frameon=True, pad=0.1, bboxprops={"edgecolor": colour, "lw": 2}))
    ax.legend(markerscale=3, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    return png(fig)


def spread(xy: np.ndarray, n: int) -> list[int]:
    """``n`` points far from each other (greedy farthest-point sampling from the centre-most one)."""
    chosen = [int(np.argmin(((xy - xy.mean(0)) ** 2).sum(1)))]
    dist = ((xy - xy[chosen[0]]) ** 2).sum(1)
    for _ in range(min(n, len(xy)) - 1):
        chosen.append(int(dist.argmax()))
        dist = np.minimum(dist, ((xy - xy[chosen[-1]]) ** 2).sum(1))
    return chosen


def neighbours(
    queries: np.ndarray,
    query_labels: np.ndarray,
    found: np.ndarray,
    found_labels: np.ndarray,
    similarity: np.ndarray,
    classes: list[str],
) -> bytes:
    """One row per query: the test image, then its nearest training images framed green when they share
    its class and red when not, with their cosine similarity. Drawn as one mosaic (one axes, not one per
    image: a hundred axes take matplotlib seconds to lay out)."""
    rows, k = found.shape[:2]
    h, w = queries.shape[-2:]
    border, gap = max(1, h // 16), max(3, h // 3)  # the frame; room above each picture for its similarity
    cell_h, cell_w = h + 2 * border + gap, w + 2 * border + gap // 2
    mosaic = np.full((rows * cell_h, (k + 1) * cell_w, 3), 255, np.uint8)
    fig = Figure(figsize=(1.25 * (k + 1) + 0.6, 1.35 * rows))
    ax = fig.add_axes((0, 0, 1, 1))
    for r in range(rows):
        for c in range(k + 1):
            image = queries[r] if c == 0 else found[r, c - 1]
            same = c == 0 or found_labels[r, c - 1] == query_labels[r]
            frame = (0, 0, 0) if c == 0 else (44, 160, 44) if same else (214, 39, 40)  # black, tab:green, tab:red
            top, left = r * cell_h + gap, c * cell_w
            mosaic[top : top + h + 2 * border, left : left + w + 2 * border] = frame
            picture = _picture(image)
            mosaic[top + border : top + border + h, left + border : left + border + w] = (
                picture[..., None] if picture.ndim == 2 else picture
            )
            if c:
                ax.text(
                    left + border + w / 2, top - 1, f"{similarity[r, c - 1]:.3f}", ha="center", va="bottom", fontsize=7
                )
        name = classes[query_labels[r]] if query_labels[r] < len(classes) else str(query_labels[r])
        ax.text(-2, r * cell_h + gap + border + h / 2, name, ha="right", va="center", fontsize=8)
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    return png(fig, dpi=90)


def permutations(perms: np.ndarray) -> bytes:
    """Jigsaw's permutation set: one row per permutation, one column per tile position, coloured by tile."""
    fig = Figure(figsize=(6, 3.2), layout="constrained")
    ax = fig.add_subplot()
    shown = perms[:64]
    image = ax.imshow(shown, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("tile position")
    ax.set_ylabel("permutation")
    fig.colorbar(image, ax=ax, label="tile")
    hamming = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    np.fill_diagonal(hamming, perms.shape[1])
    title = f"{len(perms)} permutations of {perms.shape[1]} tiles; minimum Hamming distance {hamming.min()}"
    ax.set_title(title + (f" (first {len(shown)} shown)" if len(shown) < len(perms) else ""), fontsize=9)
    return png(fig)


def leaderboard_curves(runs: dict[str, list[tuple[float, float]]], raw_pixels: float | None) -> bytes:
    """k-NN top-1 against training minutes, every run on one plot."""
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.add_subplot()
    for i, (name, points) in enumerate(runs.items()):
        if points:
            x, y = zip(*points)
            colour = colormaps["tab10"](i % 10)  # beyond ten runs, the colours come again, dashed
            ax.plot(x, y, marker="o", ms=3, lw=1.5, color=colour, ls="-" if i < 10 else "--", label=name)
    if raw_pixels is not None:
        ax.axhline(raw_pixels, ls="--", color="grey", lw=1, label=f"raw pixels {raw_pixels:.1f}%")
    ax.set_xlim(left=0)
    ax.set_xlabel("training minutes")
    ax.set_ylabel("k-NN top-1 (%), k=20")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return png(fig)
