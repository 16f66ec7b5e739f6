"""Plots of a run, drawn with matplotlib's Agg canvas: used during training (the evaluation callback's W&B
images) and offline (``a2vgen report``).

Inputs are plain records: client visits ``{"step", "round", "client", "losses": {key: loss}, "parts":
{key: {part: value}}}``, reset events, the evaluation's per-class history and PCA coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

Visits = Sequence[Mapping]  # {"step", "round", "client", "losses": {key: loss}, "parts": {key: {part: value}}}


def reset_steps(visits: Visits, events: Sequence[Mapping]) -> list[tuple[int, str]]:
    """``(step, key)`` of reset events ``{"round", "client", "keys"}``: the step of the visit they precede."""
    step_of = {(v["round"], v["client"]): v["step"] for v in reversed(visits)}
    return [
        (step_of[e["round"], e["client"]], key)
        for e in events
        if (e["round"], e["client"]) in step_of
        for key in e["keys"]
    ]


def plot_losses(visits: Visits, resets: Sequence[tuple[int, str]]) -> Figure | None:
    """Training loss per generator key at each client visit, rounds separated by dotted lines; a red
    triangle marks a reset just before that visit."""
    keys = list(dict.fromkeys(key for v in visits for key in v["losses"]))
    if not keys:
        return None
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.add_subplot()
    colors = _colors(len(keys))
    for i, key in enumerate(keys):
        points = [(v["step"], v["losses"][key]) for v in visits if key in v["losses"]]
        ax.plot(*zip(*points), marker="o", ms=3, color=colors[i], label=key)
    loss_at = {(v["step"], key): loss for v in visits for key, loss in v["losses"].items()}
    marks = [(step, loss_at[step, key]) for step, key in resets if (step, key) in loss_at]
    if marks:
        ax.scatter(*zip(*marks), marker="v", s=70, facecolor="none", edgecolor="red", zorder=3, label="reset")
    rounds: dict[int, list[int]] = {}
    for v in visits:
        rounds.setdefault(v["round"], []).append(v["step"])
    for steps in list(rounds.values())[1:]:
        ax.axvline(min(steps) - 0.5, color="gray", linestyle=":", linewidth=1)
    ax.set_xticks([sum(steps) / len(steps) for steps in rounds.values()], [f"round {r}" for r in rounds])
    ax.set(ylabel="training loss", yscale="log", title="Loss per generator at each client visit")
    ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    return fig


def plot_loss_parts(visits: Visits) -> Figure | None:
    """Every loss part other than ``loss`` (whatever the module's ``compute_loss`` returns), one panel
    per part, one line per generator key."""
    names = list(dict.fromkeys(p for v in visits for parts in v.get("parts", {}).values() for p in parts))
    names = [n for n in names if n != "loss"]
    if not names:
        return None
    keys = list(dict.fromkeys(key for v in visits for key in v.get("parts", {})))
    colors = _colors(len(keys))
    fig = Figure(figsize=(9, 2.6 * len(names)), layout="constrained")
    axes = fig.subplots(len(names), 1, squeeze=False, sharex=True)[:, 0]
    for ax, name in zip(axes, names):
        for i, key in enumerate(keys):
            points = [(v["step"], v["parts"][key][name]) for v in visits if name in v.get("parts", {}).get(key, {})]
            if points:
                ax.plot(*zip(*points), marker="o", ms=2, color=colors[i], label=key)
        ax.set(ylabel=name)
    axes[0].set_title("Loss parts per generator at each client visit")
    axes[-1].set_xlabel("client visit")
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    return fig


def plot_heatmap(history: Mapping[str, Mapping[str, Sequence[Sequence[float]]]], metric: str) -> Figure | None:
    """Per-class ``metric`` over evaluated rounds (blank: class not evaluated yet)."""
    per_class = history.get(metric)
    if not per_class:
        return None
    rounds = sorted({int(r) for points in per_class.values() for r, _ in points})
    labels = list(per_class)
    grid = np.full((len(labels), len(rounds)), np.nan)
    for i, label in enumerate(labels):
        for r, value in per_class[label]:
            grid[i, rounds.index(int(r))] = value
    bounded = metric in ("synthetic_accuracy", "real_accuracy", "tstr_accuracy", "recall")
    fig = Figure(figsize=(1.6 + 0.7 * len(rounds), 1.2 + 0.35 * len(labels)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0 if bounded else None, vmax=1 if bounded else None)
    low, high = image.get_clim()
    for (i, j), value in np.ndenumerate(grid):
        if not math.isnan(value):
            dark = (value - low) < 0.5 * (high - low)
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_xticks(range(len(rounds)), [str(r) for r in rounds])
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="round", title=metric.replace("_", " "))
    fig.colorbar(image, ax=ax)
    return fig


def plot_pca(pca: Mapping) -> Figure | None:
    """Real vs synthetic samples of a few classes, each on the top-2 principal axes of its two sets."""
    classes = pca.get("classes") if pca else None
    if not classes:
        return None
    fig = Figure(figsize=(3.2 * len(classes), 3.4), layout="constrained")
    axes = fig.subplots(1, len(classes), squeeze=False)[0]
    for ax, (label, points) in zip(axes, classes.items()):
        real, fake = np.asarray(points["real"]), np.asarray(points["synthetic"])
        ax.scatter(real[:, 0], real[:, 1], s=14, color="tab:blue", label="real (held-out)")
        ax.scatter(fake[:, 0], fake[:, 1], s=14, marker="x", color="tab:orange", label="synthetic")
        ax.set(title=label, xlabel="PC 1", ylabel="PC 2")
    axes[0].legend(fontsize="small")
    fig.suptitle(f"PCA of real vs synthetic embeddings (round {pca.get('round')})")
    return fig


def figure_array(fig: Figure) -> np.ndarray:
    """The figure rendered as an RGB array ``[H, W, 3]`` (e.g. for ``wandb.Image``)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]
