"""Where the evaluation's records go: the loggers (scalars; a per-class table and plots on W&B) and
``evaluation.json``; and the per-class history and forgetting computed from them."""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

from a2vgen.federation.view import federation_of, output_path
from a2vgen.io import atomic_path
from a2vgen.metrics import forgetting

#: per-class scores whose forgetting is tracked, with whether higher is better
FORGETTING_METRICS = {"fd_ratio": False, "synthetic_accuracy": True}
#: the scores a reader should look at first (ideal 1; the centroid's FD ratio is the collapse floor)
LEAD_SCORES = ("fd_ratio", "centroid_fd_ratio", "diversity_ratio", "recall", "memorization_ratio")


class EvaluationOutputs:
    """The outputs half of :class:`~a2vgen.callbacks.evaluation.GeneratorEvaluation`: keeps ``records`` (one
    per evaluated round), ``losses`` (one per client visit) and ``pca`` across rounds and checkpoints, and
    writes them out. The class using it sets ``split``, ``num_samples`` and ``dirpath``."""

    records: list[dict]
    losses: list[dict]
    pca: dict
    split: str
    num_samples: int
    dirpath: str | None

    def history(self) -> dict[str, dict[str, list[list[float]]]]:
        """``{metric: {label: [[round, value], ...]}}`` over the evaluated rounds."""
        out: dict[str, dict[str, list[list[float]]]] = {}
        for record in self.records:
            for label, scores in record["per_class"].items():
                for metric, value in scores.items():
                    out.setdefault(metric, {}).setdefault(label, []).append([record["round"], value])
        return out

    def forgetting(self) -> dict[str, dict[str, float]]:
        """Each label's drop from its best score, for the scores of :data:`FORGETTING_METRICS`."""
        history = self.history()
        return {
            metric: forgetting({lab: [tuple(p) for p in pts] for lab, pts in history[metric].items()}, higher)
            for metric, higher in FORGETTING_METRICS.items()
            if metric in history
        }

    def _log(self, trainer, record: dict) -> None:
        metrics = {f"eval/{name}": value for name, value in record["summary"].items()}
        for label, scores in record["per_class"].items():
            metrics.update({f"eval/{metric}/{label}": value for metric, value in scores.items()})
        for metric, drops in self.forgetting().items():
            metrics.update({f"eval/forgetting/{metric}/{label}": value for label, value in drops.items()})
        metrics.update({"eval/seconds": record["seconds"], "round": float(record["round"])})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=record["step"])
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, record, reset_events(trainer))

    def _log_wandb(self, logger: WandbLogger, record: dict, resets: list[dict]) -> None:
        from a2vgen.plots import figure_array, plot_heatmap, plot_losses, plot_pca, reset_steps

        names = sorted({m for scores in record["per_class"].values() for m in scores})
        rows = [[label, *(scores.get(m) for m in names)] for label, scores in record["per_class"].items()]
        logger.log_table("eval/per_class", columns=["class", *names], data=rows, step=record["step"])
        figures = {
            "eval/plots/losses": plot_losses(self.losses, reset_steps(self.losses, resets)),
            "eval/plots/synthetic_accuracy": plot_heatmap(self.history(), "synthetic_accuracy"),
            "eval/plots/pca": plot_pca(self.pca),
        }
        for key, fig in figures.items():
            if fig is not None:
                logger.log_image(key, [figure_array(fig)], step=record["step"])

    def write(self, trainer) -> Path:
        """Write ``evaluation.json`` atomically and return its path."""
        path = output_path(trainer, self.dirpath) / "evaluation.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        content = {
            "format": "a2vgen-evaluation/1",
            "split": self.split,
            "num_samples": self.num_samples,
            "records": self.records,
            "lead": list(LEAD_SCORES),
            "history": self.history(),
            "forgetting": self.forgetting(),
            "losses": self.losses,
            "resets": reset_events(trainer),
            "pca": self.pca,
        }
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(content, indent=1))
        return path

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"records": self.records, "losses": self.losses, "pca": self.pca}

    def load_state_dict(self, state_dict: dict) -> None:
        self.records = list(state_dict["records"])
        self.losses = list(state_dict["losses"])
        self.pca = dict(state_dict["pca"])


def reset_events(trainer) -> list[dict]:
    """The run's reset events (round, client, classes, keys, seen), from the federation's record."""
    return [event.as_dict() for event in federation_of(trainer).resets]
