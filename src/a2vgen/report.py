"""``a2vgen report <run_dir>``: PNG plots of a run and one HTML page that shows them.

Reads ``metrics.csv`` (training losses and resets, written by the CSV logger), ``evaluation.json``
(written by :class:`~a2vgen.callbacks.evaluation.GeneratorEvaluation`) and ``checkpoints/last.ckpt``
(the generators' ages and seen classes); each is optional. The plots come from :mod:`a2vgen.plots`.
"""

from __future__ import annotations

import csv
import html
import json
from collections.abc import Sequence
from pathlib import Path

from jsonargparse import ArgumentParser

from a2vgen.federation.runs import CHECKPOINTS, LAST
from a2vgen.plots import Visits, plot_heatmap, plot_loss_parts, plot_losses, plot_pca, reset_steps

HEATMAP_METRICS = ("fd_ratio", "diversity_ratio", "synthetic_accuracy")
TABLE_METRICS = (
    "fd_ratio", "centroid_fd_ratio", "diversity_ratio", "recall", "memorization_ratio",
    "synthetic_accuracy", "real_accuracy", "tstr_accuracy",
)  # fmt: skip


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


def last_loss_parts(visits: Visits) -> tuple[list[str], list[list]]:
    """Header and rows ``[key, part values…]`` of each key's loss parts at its last visit."""
    last: dict[str, dict[str, float]] = {}
    for v in visits:
        last.update(v.get("parts", {}))
    names = list(dict.fromkeys(p for parts in last.values() for p in parts))
    return ["key", *names], [[key, *(parts.get(n) for n in names)] for key, parts in last.items()]


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
    body = _html(run_dir, images, evaluation, _generators(run_dir / CHECKPOINTS / LAST), visits)
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
