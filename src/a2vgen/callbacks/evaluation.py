"""Score the generators against held-out real embeddings every few rounds; log and keep the history."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from a2vgen.callbacks.reset import ClassChangeResetCallback
from a2vgen.data.embeddings import EmbeddingSet
from a2vgen.metrics import LinearProbe, evaluate_generators, fit_linear_probe, forgetting
from a2vgen.metrics.functional import pca_projection
from a2vgen.modules.bank import GeneratorBank
from a2vgen.modules.base import BaseGeneratorModule

log = logging.getLogger(__name__)

#: per-class scores whose forgetting is tracked, with whether higher is better
FORGETTING_METRICS = {"synthetic_accuracy": True, "coverage": True, "kid": False}


class GeneratorEvaluation(Callback):
    """Compare each class's synthetic samples with its held-out real embeddings at round ends.

    The real set of a class is the ``split`` samples of the federated data (all clients' held-out samples
    pooled; never training samples); the linear probe is fitted on the real *training* embeddings of all
    classes. Classes are scored from the round some client first holds them. Shared and ``fedavg`` runs
    score the server's generators; independent runs without aggregation score each client's generators
    on the classes that client has held, labelled ``<class>@<client>``.

    Every evaluation logs ``eval/<metric>[/<label>]`` to every logger (a per-class table on W&B, plus the
    report plots) and rewrites ``<dirpath>/evaluation.json`` (atomically) with one record per evaluated
    round (per-class and pooled scores, evaluation and training seconds), the per-class history, each
    class's forgetting (drop from its best score), each client visit's training losses, reset events, and 2-D PCA
    coordinates of real and synthetic samples of a few classes for :func:`a2vgen.report.write_report`.

    Args:
        every_n_rounds: evaluate every ``k`` rounds (and after the final round).
        num_samples: synthetic samples per class.
        split: held-out split of the real embeddings (``val`` or ``test``).
        k: neighbours of precision/recall/density/coverage.
        pca_dim: PCA dimensions of the pooled Fréchet distance (``None``: all).
        probe: add the linear-probe synthetic and real accuracies.
        seed: seed of the synthetic samples (the same noise every round, so rounds compare generators).
        pca_classes: classes drawn in the PCA plot (the first evaluated ones).
        pca_points: real and synthetic points per class in the PCA plot.
        threads: CPU threads while evaluating (its tensors are small: extra threads mostly add
            synchronisation, which costs seconds on a busy machine); ``None`` keeps the current setting.
        dirpath: folder of ``evaluation.json`` (default: the logger's run folder).
    """

    def __init__(
        self,
        every_n_rounds: int = 1,
        num_samples: int = 64,
        split: str = "val",
        k: int = 5,
        pca_dim: int | None = 32,
        probe: bool = True,
        seed: int = 0,
        pca_classes: int = 4,
        pca_points: int = 32,
        threads: int | None = 1,
        dirpath: str | None = None,
    ) -> None:
        if every_n_rounds < 1 or num_samples < 2:
            raise ValueError("every_n_rounds must be >= 1 and num_samples >= 2")
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test' (held-out data), got {split!r}")
        self.every_n_rounds, self.num_samples, self.split = every_n_rounds, num_samples, split
        self.k, self.pca_dim, self.probe, self.seed = k, pca_dim, probe, seed
        self.pca_classes, self.pca_points, self.threads = pca_classes, pca_points, threads
        self.dirpath = dirpath
        self.records: list[dict] = []
        self.losses: list[dict] = []
        self.pca: dict = {}
        self.real_indices: dict[str, Tensor] = {}
        self._linear_probe: LinearProbe | None = None
        self._round_seconds = 0.0

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer, module) -> None:
        self._linear_probe = None  # fitted on this fit's training data at the first evaluation

    def on_client_end(self, trainer, module, visit) -> None:
        self._round_seconds += visit.seconds
        losses = {key: values["loss"] for key, values in visit.stats.items()}
        step = trainer.fit_loop.visits - 1  # the step the loop logged this visit at
        self.losses.append({"step": step, "round": visit.round, "client": visit.client.id, "losses": losses})

    def on_round_end(self, trainer, module: BaseGeneratorModule, round: int) -> None:
        train_seconds, self._round_seconds = self._round_seconds, 0.0
        final = round >= trainer.federation.max_rounds
        if round % self.every_n_rounds and not final:
            return
        start = time.perf_counter()
        threads = torch.get_num_threads()
        if self.threads is not None and module.device.type == "cpu":
            torch.set_num_threads(self.threads)
        try:
            with torch.random.fork_rng(devices=[]):
                record = self.evaluate(trainer, module, round)
        finally:
            torch.set_num_threads(threads)
        record.update(seconds=time.perf_counter() - start, train_seconds=train_seconds)
        self.records.append(record)
        self._log(trainer, record)
        path = self.write(trainer)
        log.info(
            "round %d: evaluated %d classes in %.2fs (training %.2fs): synthetic accuracy %s, FD %.4g (baseline %.4g)",
            round, len(record["per_class"]), record["seconds"], train_seconds,
            _fmt(record["summary"].get("synthetic_accuracy")), record["summary"].get("frechet", float("nan")),
            record["summary"].get("frechet_baseline", float("nan")),
        )  # fmt: skip
        log.debug("evaluation written to %s", path)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, trainer, module: BaseGeneratorModule, round: int) -> dict:
        """Scores of the generators after ``round``: ``{"round", "step", "per_class", "summary"}``."""
        data: EmbeddingSet = trainer.datamodule.data
        specs = trainer.datamodule.clients
        loop = trainer.fit_loop
        held = {spec.id: _held_until(spec, round) for spec in specs}
        targets: dict[str | None, tuple[GeneratorBank, list[str]]]
        if loop.config.shared_generators or loop.config.aggregation != "none":
            classes = [c for c in data.classes if any(c in h for h in held.values())]
            targets = {None: (module.bank, classes)}
        else:
            banks = loop.generators.banks()
            targets = {cid: (banks[cid], [c for c in data.classes if c in held[cid]]) for cid in held if held[cid]}
        real = self._real(data, [c for _, classes in targets.values() for c in classes])
        per_class, summary, fakes = {}, {}, {}
        for cid, (bank, classes) in targets.items():
            classes = [c for c in classes if c in real]
            sample = self._sampler(module, bank, cid, fakes)
            was_training = bank.training
            bank.eval()  # networks with dropout or batch norm sample in inference mode
            results = evaluate_generators(
                {c: real[c] for c in classes}, sample, self.num_samples, None, self.k, self.pca_dim
            )
            bank.train(was_training)
            if self.probe:
                results.update(self._probe_accuracy(data, {c: real[c] for c in classes}, fakes, cid))
            for name, value in results.items():
                metric, _, cls = name.partition("/")
                if cls:
                    per_class.setdefault(_label(cls, cid), {})[metric] = value
                else:
                    summary[metric if cid is None else f"{metric}@{cid}"] = value
        self._update_pca(real, fakes, round)
        return {"round": round, "step": loop.visits, "per_class": per_class, "summary": summary}

    def _sampler(
        self, module: BaseGeneratorModule, bank: GeneratorBank, client: str | None, fakes: dict[str, Tensor]
    ) -> Callable[[str, int], Tensor]:
        """``sample(class, n)`` from ``bank`` (seeded), keeping each class's samples in ``fakes``."""
        gen = torch.Generator(module.device).manual_seed(self.seed)

        def sample(cls: str, n: int) -> Tensor:
            net = bank[module.generator_key(cls)].net
            fakes[_label(cls, client)] = fake = net.sample(n, module.class_condition(cls), generator=gen).cpu()
            return fake

        return sample

    def _real(self, data: EmbeddingSet, classes: list[str]) -> dict[str, Tensor]:
        """Held-out real features of ``classes`` (those with ≥ 2 samples); remembers their indices."""
        idx = data.split_indices(self.split)
        real = {}
        for cls in dict.fromkeys(classes):
            members = idx[data.labels[idx] == data.classes.index(cls)]
            if len(members) < 2:
                log.warning("class %r has %d %s samples (< 2): not evaluated", cls, len(members), self.split)
                continue
            self.real_indices[cls] = members
            real[cls] = data.audio[members]
        return real

    def _probe_accuracy(
        self, data: EmbeddingSet, real: dict[str, Tensor], fakes: dict[str, Tensor], client: str | None
    ) -> dict[str, float]:
        """``synthetic_accuracy`` and ``real_accuracy`` (per class and mean) of a linear probe.

        The probe is fitted once per fit on the real training embeddings of all classes, exactly as
        :class:`~a2vgen.metrics.SyntheticClassAccuracy` fits it (the training data never changes, and the
        fit is most of the evaluation's cost).
        """
        if self._linear_probe is None:
            idx = data.split_indices("train")
            self._linear_probe = fit_linear_probe(data.audio[idx].flatten(1), data.labels[idx], len(data.classes))
        results: dict[str, float] = {}
        for cls in real:
            target = data.classes.index(cls)
            for name, x in (("synthetic_accuracy", fakes[_label(cls, client)]), ("real_accuracy", real[cls])):
                hits = self._linear_probe.predict(x.flatten(1)) == target
                results[f"{name}/{cls}"] = float(hits.double().mean())
        for name in ("synthetic_accuracy", "real_accuracy"):
            results[name] = sum(results[f"{name}/{cls}"] for cls in real) / len(real)
        return results

    def _update_pca(self, real: dict[str, Tensor], fakes: dict[str, Tensor], round: int) -> None:
        """2-D PCA of real and synthetic samples of the first ``pca_classes`` labels, each class on the
        top-2 principal axes of its own real and synthetic samples together."""
        classes = {}
        for label in list(fakes)[: self.pca_classes]:
            pair = (real[label.partition("@")[0]][: self.pca_points], fakes[label][: self.pca_points])
            mean, axes = pca_projection(torch.cat(pair).flatten(1), 2)
            classes[label] = {
                kind: ((x.flatten(1).double() - mean) @ axes).tolist() for kind, x in zip(("real", "synthetic"), pair)
            }
        if classes:
            self.pca = {"round": round, "classes": classes}

    # ------------------------------------------------------------------ outputs
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
        from a2vgen.report import figure_array, plot_heatmap, plot_losses, plot_pca, reset_steps

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
        path = Path(self.dirpath or trainer.log_dir or trainer.default_root_dir) / "evaluation.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        content = {
            "format": "a2vgen-evaluation/1",
            "split": self.split,
            "num_samples": self.num_samples,
            "records": self.records,
            "history": self.history(),
            "forgetting": self.forgetting(),
            "losses": self.losses,
            "resets": reset_events(trainer),
            "pca": self.pca,
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(content, indent=1))
        os.replace(tmp, path)
        return path

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"records": self.records, "losses": self.losses, "pca": self.pca}

    def load_state_dict(self, state_dict: dict) -> None:
        self.records = list(state_dict["records"])
        self.losses = list(state_dict["losses"])
        self.pca = dict(state_dict["pca"])


def reset_events(trainer) -> list[dict]:
    """Reset events (round, client, classes, keys) recorded by the trainer's reset callbacks."""
    return [e for c in trainer.callbacks if isinstance(c, ClassChangeResetCallback) for e in c.events]


def _held_until(spec, round: int) -> set[str]:
    return {c for r in range(1, round + 1) for c in spec.classes_at(r)}


def _label(cls: str, client: str | None) -> str:
    return cls if client is None else f"{cls}@{client}"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
