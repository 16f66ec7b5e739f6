"""``a2vgen report <run_dir>``: PNG plots of a run and one HTML page that shows them.

Reads ``metrics.csv`` (training losses and resets, written by the CSV logger), ``evaluation.json``
(written by :class:`~a2vgen.callbacks.evaluation.GeneratorEvaluation`) and ``checkpoints/last.ckpt``
(the generators' ages and seen classes); each is optional. Plots are drawn with matplotlib's Agg canvas.
"""

from __future__ import annotations

import csv
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from jsonargparse import ArgumentParser
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

HEATMAP_METRICS = ("fd_ratio", "diversity_ratio", "synthetic_accuracy")
TABLE_METRICS = (
    "fd_ratio", "centroid_fd_ratio", "diversity_ratio", "recall", "memorization_ratio",
    "synthetic_accuracy", "real_accuracy", "tstr_accuracy",
)  # fmt: skip

Visits = Sequence[Mapping]  # {"step", "round", "client", "losses": {key: loss}, "parts": {key: {part: value}}}


# ---------------------------------------------------------------------- inputs
def read_training_log(path: str | Path) -> tuple[list[dict], list[tuple[int, str]]]:
    """From a CSV logger's ``metrics.csv``: each client visit's ``{"step", "round", "client", "losses",
    "parts"}`` (loss, and every loss part the module logged, per generator key it trained) and the reset
    events ``(step of the visit they precede, key)``."""
    visits, resets = [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("round") or not row.get("step"):
                continue
            step, losses, loss_parts, client = int(float(row["step"])), {}, {}, None
            for column, value in row.items():
                parts = column.split("/")
                if not value:
                    continue
                if parts[0] == "resets" and len(parts) == 2:
                    resets.append((step, parts[1]))
                elif parts[0] == "train" and len(parts) == 4 and parts[3] != "samples":
                    client = parts[1]
                    loss_parts.setdefault(parts[2], {})[parts[3]] = float(value)
                    if parts[3] == "loss":
                        losses[parts[2]] = float(value)
            if losses:
                visits.append(
                    {"step": step, "round": int(float(row["round"])), "client": client, "losses": losses,
                     "parts": loss_parts}
                )  # fmt: skip
    return visits, resets


def reset_steps(visits: Visits, events: Sequence[Mapping]) -> list[tuple[int, str]]:
    """``(step, key)`` of reset events ``{"round", "client", "keys"}``: the step of the visit they precede."""
    step_of = {(v["round"], v["client"]): v["step"] for v in reversed(visits)}
    return [
        (step_of[e["round"], e["client"]], key)
        for e in events
        if (e["round"], e["client"]) in step_of
        for key in e["keys"]
    ]


# ---------------------------------------------------------------------- plots
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


def last_loss_parts(visits: Visits) -> tuple[list[str], list[list]]:
    """Header and rows ``[key, part values…]`` of each key's loss parts at its last visit."""
    last: dict[str, dict[str, float]] = {}
    for v in visits:
        last.update(v.get("parts", {}))
    names = list(dict.fromkeys(p for parts in last.values() for p in parts))
    return ["key", *names], [[key, *(parts.get(n) for n in names)] for key, parts in last.items()]


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


# ---------------------------------------------------------------------- report
def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's PNGs and ``report.html`` into ``out`` (default ``<run_dir>/report``); returns the page."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    out = Path(out) if out is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    evaluation = _read_json(run_dir / "evaluation.json")
    if (run_dir / "metrics.csv").is_file():
        visits, resets = read_training_log(run_dir / "metrics.csv")
    else:  # e.g. a W&B-only run: the evaluation callback's copy
        visits = evaluation.get("losses", [])
        resets = reset_steps(visits, evaluation.get("resets", []))
    figures = {
        "losses.png": plot_losses(visits, resets),
        "loss_parts.png": plot_loss_parts(visits),
        "pca.png": plot_pca(evaluation.get("pca", {})),
    }
    for metric in HEATMAP_METRICS:
        figures[f"heatmap_{metric}.png"] = plot_heatmap(evaluation.get("history", {}), metric)
    images = []
    for name, fig in figures.items():
        if fig is not None:
            fig.savefig(out / name, dpi=110)
            images.append(name)
    page = out / "report.html"
    body = _html(run_dir, images, evaluation, _generators(run_dir / "checkpoints" / "last.ckpt"), visits)
    page.write_text(body)
    return page


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _generators(ckpt_path: Path) -> list[list[str]]:
    """Rows ``[owner, key, age, seen classes]`` of the checkpoint's generators (empty without one)."""
    if not ckpt_path.is_file():
        return []
    from a2vgen.federation.checkpoint import load_module, stored_owners

    module, ckpt = load_module(ckpt_path)
    banks = {
        "server" if owner is None else f"client {owner}": bank for owner, bank in stored_owners(module, ckpt).items()
    }
    return [
        [owner, key, str(int(slot.age)), ", ".join(slot.seen_classes(module.classes))]
        for owner, bank in banks.items()
        for key, slot in bank.items()
    ]


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value if value is not None else ""))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _html(run_dir: Path, images: list[str], evaluation: dict, generators: list[list[str]], visits: Visits) -> str:
    parts = [f"<h1>a2vgen run {html.escape(str(run_dir))}</h1>"]
    header, rows = last_loss_parts(visits)
    if rows:
        parts += ["<h2>Training loss parts (each generator's last visit)</h2>", _table(header, rows)]
    records = evaluation.get("records", [])
    if records:
        final = records[-1]
        drops = evaluation.get("forgetting", {}).get("synthetic_accuracy", {})
        metrics = [m for m in TABLE_METRICS if any(m in s for s in final["per_class"].values())]
        rows = [[label, *(s.get(m) for m in metrics), drops.get(label)] for label, s in final["per_class"].items()]
        eval_seconds = sum(r["seconds"] for r in records) / len(records)
        train_seconds = sum(r["train_seconds"] for r in records) / len(records)
        parts += [
            f"<h2>Final evaluation (round {final['round']}, {html.escape(evaluation.get('split', ''))} split)</h2>",
            _table(["pooled", "value"], [[k, v] for k, v in final["summary"].items()]),
            f"<p>Evaluation: {eval_seconds:.2f} s per evaluation; training: {train_seconds:.2f} s "
            f"per evaluated round ({len(records)} evaluations).</p>",
            _table(["class", *metrics, "forgetting (synthetic accuracy)"], rows),
        ]
    if generators:
        parts += ["<h2>Generators (last checkpoint)</h2>", _table(["owner", "key", "age", "seen classes"], generators)]
    parts += [f'<h2>{html.escape(name[:-4])}</h2><img src="{html.escape(name)}" alt="{name}">' for name in images]
    style = "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>a2vgen report</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n"


def report_command(args: list[str]) -> None:
    """``a2vgen report <run_dir> [--out DIR]``."""
    parser = ArgumentParser(prog="a2vgen report", description="PNG plots and an HTML page of a training run.")
    parser.add_argument("run_dir", type=str, help="run folder (e.g. runs/demo/version_0)")
    parser.add_argument("--out", type=str | None, default=None, help="output folder (default: <run_dir>/report)")
    parser.add_argument("--imports", type=list[str], default=[], help="modules defining your generator types")
    cfg = parser.parse_args(args)
    from a2vgen.modules.registry import import_plugins

    import_plugins(cfg.imports)
    print(f"wrote {write_report(cfg.run_dir, cfg.out)}")
