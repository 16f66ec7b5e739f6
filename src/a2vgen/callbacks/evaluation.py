"""Score the generators against held-out real embeddings every few rounds; log and keep the history."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from lightning.pytorch import Callback
from torch import Tensor

from a2vgen.callbacks.evaluation_outputs import EvaluationOutputs
from a2vgen.data.embeddings import EmbeddingSet
from a2vgen.federation.view import federation_of
from a2vgen.metrics import LinearProbe
from a2vgen.metrics.functional import pca_projection
from a2vgen.metrics.quality import (
    COLLAPSE_DIVERSITY,
    MIN_HELD,
    evaluate_classes,
    features,
    fit_probe,
    frechet_ratio,
    reference_samplers,
    summarize,
)
from a2vgen.modules.bank import GeneratorBank
from a2vgen.modules.base import BaseGeneratorModule

log = logging.getLogger(__name__)


class GeneratorEvaluation(EvaluationOutputs, Callback):
    """Compare each class's synthetic samples with its held-out real embeddings at round ends.

    The real set of a class is the ``split`` samples of the federated data (all clients' held-out samples
    pooled; never training samples); the linear probe is fitted on the real *training* embeddings of all
    classes. Classes are scored from the round some client first holds them. Shared and ``fedavg`` runs
    score the server's generators; independent runs without aggregation score each client's generators
    on the classes that client has held, labelled ``<class>@<client>``.

    The scores lead with what a collapsed or copying generator cannot pass (see
    :mod:`a2vgen.metrics.quality`): per-class ``fd_ratio`` (Fréchet distance to the held-out clips over
    that of the training clips, at equal n) beside ``centroid_fd_ratio`` (the same for a generator that
    returns the class mean), ``diversity_ratio``, ``recall`` and ``memorization_ratio``; then the probe's
    ``synthetic_accuracy`` / ``real_accuracy`` and ``tstr_accuracy`` (a probe trained on synthetic samples
    only, tested on real ones). A warning is logged for every class whose diversity ratio is below 0.3
    (collapse), for generators whose samples a probe that recognises real clips puts near chance
    (conditioning ignored), and for classes with too few held-out samples to judge.

    Every evaluation logs ``eval/<metric>[/<label>]`` to every logger (a per-class table on W&B, plus the
    report plots) and rewrites ``<dirpath>/evaluation.json`` (atomically) with one record per evaluated
    round (per-class and pooled scores, evaluation and training seconds), the per-class history, each
    class's forgetting (drop from its best score), each client visit's training losses, reset events, and 2-D PCA
    coordinates of real and synthetic samples of a few classes for :func:`a2vgen.report.write_report`.

    Args:
        every_n_rounds: evaluate every ``k`` rounds (and after the final round).
        num_samples: synthetic samples per class.
        split: held-out split of the real embeddings (``val`` or ``test``).
        pooling: features compared: ``mean`` (audio tokens averaged) or ``flat`` (all tokens).
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
        pooling: str = "mean",
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
        if pooling not in ("mean", "flat"):
            raise ValueError(f"pooling must be 'mean' or 'flat', got {pooling!r}")
        self.pooling, self.seed = pooling, seed
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
        step = federation_of(trainer).visits - 1  # the step the loop logged this visit at
        self.losses.append({"step": step, "round": visit.round, "client": visit.client.id, "losses": losses})

    def on_round_end(self, trainer, module: BaseGeneratorModule, round: int) -> None:
        train_seconds, self._round_seconds = self._round_seconds, 0.0
        if not federation_of(trainer).config.due(round, self.every_n_rounds):
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
        summary = record["summary"]
        log.info(
            "round %d: %d classes vs held-out clips (ideal 1): FD ratio %s (centroid %s), diversity %s "
            "(min %s), recall %s, memorization %s, probe %s; evaluated in %.2fs (training %.2fs)",
            round, len(record["per_class"]), _fmt(summary.get("fd_ratio")), _fmt(summary.get("centroid_fd_ratio")),
            _fmt(summary.get("diversity_ratio")), _fmt(summary.get("min_diversity_ratio")),
            _fmt(summary.get("recall")), _fmt(summary.get("memorization_ratio")), _fmt(summary.get("probe_ratio")),
            record["seconds"], train_seconds,
        )  # fmt: skip
        log.debug("evaluation written to %s", path)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, trainer, module: BaseGeneratorModule, round: int) -> dict:
        """Scores of the generators after ``round``: ``{"round", "step", "per_class", "summary"}``."""
        data: EmbeddingSet = trainer.datamodule.data
        specs = trainer.datamodule.clients
        federation = federation_of(trainer)
        held = {spec.id: _held_until(spec, round) for spec in specs}
        held[None] = set().union(*held.values())  # the server's generators: every class some client held
        targets = {
            owner: (bank, [c for c in data.classes if c in held[owner]])
            for owner, bank in federation.results().items()
            if held[owner]
        }
        real = self._real(data, [c for _, classes in targets.values() for c in classes])
        train = self._train(data, list(real))
        if self._linear_probe is None:
            labels = {c: i for i, c in enumerate(data.classes)}
            self._linear_probe = fit_probe({c: features(x, self.pooling) for c, x in self._train(data).items()}, labels)
        per_class, summary, fakes = {}, {}, {}
        for cid, (bank, classes) in targets.items():
            classes = [c for c in classes if c in real]
            if not classes:
                continue
            sample = self._sampler(module, bank, cid, fakes)
            was_training = bank.training
            bank.eval()  # networks with dropout or batch norm sample in inference mode
            scores = evaluate_classes(
                {c: train[c] for c in classes}, {c: real[c] for c in classes}, sample, self.num_samples,
                self.pooling, self._linear_probe, self.seed, data.classes,
            )  # fmt: skip
            bank.train(was_training)
            for cls, values in scores.items():
                centroid = reference_samplers(features(train[cls], self.pooling))["centroid"]
                values["centroid_fd_ratio"] = frechet_ratio(
                    features(train[cls], self.pooling), features(real[cls], self.pooling), centroid(self.num_samples)
                )["fd_ratio"]
                per_class[_label(cls, cid)] = values
            for name, value in summarize(scores, len(data.classes)).items():
                summary[name if cid is None else f"{name}@{cid}"] = value
        self._warn(per_class, summary, round)
        self._update_pca(real, fakes, round)
        return {"round": round, "step": federation.visits, "per_class": per_class, "summary": summary}

    def _warn(self, per_class: dict[str, dict], summary: dict[str, float], round_: int) -> None:
        """Log a warning per collapsed class and per generator set that ignores its conditioning."""
        collapsed = {c: s["diversity_ratio"] for c, s in per_class.items() if s["diversity_ratio"] < COLLAPSE_DIVERSITY}
        if collapsed:
            log.warning(
                "round %d: generators of %s collapse (diversity ratio %s < %.1f: samples have little spread; "
                "the original objective does this on small classes)",
                round_, sorted(collapsed), [round(v, 3) for v in collapsed.values()], COLLAPSE_DIVERSITY,
            )  # fmt: skip
        for name, value in summary.items():
            if name.startswith("ignores_conditioning") and value:
                log.warning(
                    "round %d: synthetic samples%s are near chance for a probe that recognises real clips "
                    "(synthetic accuracy %.2f vs real %.2f): the generators ignore their conditioning",
                    round_, name.partition("@")[1] + name.partition("@")[2],
                    summary[name.replace("ignores_conditioning", "synthetic_accuracy")],
                    summary[name.replace("ignores_conditioning", "real_accuracy")],
                )  # fmt: skip

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
            if len(members) < MIN_HELD and cls not in self.real_indices:
                log.warning(
                    "class %r has %d %s samples: too few to judge its spread (FD and recall need >= %d)",
                    cls, len(members), self.split, MIN_HELD,
                )  # fmt: skip
            self.real_indices[cls] = members
            real[cls] = data.audio[members]
        return real

    def _train(self, data: EmbeddingSet, classes: list[str] | None = None) -> dict[str, Tensor]:
        """Real training features per class (all clients' training samples)."""
        idx = data.split_indices("train")
        return {
            cls: data.audio[idx[data.labels[idx] == data.classes.index(cls)]]
            for cls in (classes if classes is not None else data.classes)
        }

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


def _held_until(spec, round: int) -> set[str]:
    return {c for r in range(1, round + 1) for c in spec.classes_at(r)}


def _label(cls: str, client: str | None) -> str:
    return cls if client is None else f"{cls}@{client}"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"
