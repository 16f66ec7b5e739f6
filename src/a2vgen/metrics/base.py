"""Accumulation of labelled real and synthetic features, shared by every metric of this package."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

Labels = Tensor | Sequence[int] | Sequence[str] | int | str | None


class ClassFeatureMetric(Metric):
    """Collects ``(features, class label)`` pairs for each *role* (``real``, ``fake``, ...).

    ``update(real=..., fake=..., real_labels=..., fake_labels=...)`` takes either set or both. Features
    are ``[N, ...]`` (e.g. AST tokens ``[N, L, D]``) and are flattened to ``[N, F]`` float32 vectors.
    Labels are a class index or name for the whole batch, or one per sample (``[N]`` tensor or list);
    names need ``classes``. Labels may be left out while at most one class is known. States are lists
    concatenated across processes (``dist_reduce_fx="cat"``), so ``compute`` sees every process's
    samples. Call ``update`` and ``compute``; ``forward`` (per-batch values) is not meaningful here.

    Args:
        classes: class names, indexed by label; keys of ``compute`` use them (else the label number).
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False
    roles: tuple[str, ...] = ("real", "fake")

    def __init__(self, classes: Sequence[str] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.classes = list(classes) if classes is not None else None
        for role in self.roles:
            self.add_state(f"{role}_features", default=[], dist_reduce_fx="cat")
            self.add_state(f"{role}_labels", default=[], dist_reduce_fx="cat")

    def update(
        self,
        real: Tensor | None = None,
        fake: Tensor | None = None,
        real_labels: Labels = None,
        fake_labels: Labels = None,
    ) -> None:
        """Add held-out real and/or synthetic features of the given classes."""
        self._append("real", real, real_labels)
        self._append("fake", fake, fake_labels)

    def class_name(self, label: int) -> str:
        """The name used in result keys for class index ``label``."""
        return self.classes[label] if self.classes is not None else str(label)

    def _append(self, role: str, features: Tensor | None, labels: Labels) -> None:
        if features is None:
            return
        features = features.detach().flatten(1).float()
        getattr(self, f"{role}_features").append(features)
        getattr(self, f"{role}_labels").append(self._encode(labels, features.shape[0], features.device))

    def _encode(self, labels: Labels, n: int, device: torch.device) -> Tensor:
        if labels is None:
            if self.classes is not None and len(self.classes) > 1:
                raise ValueError(f"labels are required with several classes ({self.classes})")
            labels = 0
        if isinstance(labels, (int, str)):
            labels = [labels] * n
        if not isinstance(labels, Tensor):
            labels = torch.tensor([self._index(label) for label in labels], dtype=torch.long)
        if labels.dim() == 0:
            labels = labels.expand(n)
        if labels.shape != (n,):
            raise ValueError(f"expected {n} labels, got shape {tuple(labels.shape)}")
        high = len(self.classes) if self.classes is not None else None
        if labels.numel() and (labels.min() < 0 or (high is not None and labels.max() >= high)):
            raise ValueError(f"labels {labels.unique().tolist()} are not indices of classes {self.classes}")
        return labels.to(device=device, dtype=torch.long)

    def _index(self, label: int | str) -> int:
        if not isinstance(label, str):
            return int(label)
        if self.classes is None or label not in self.classes:
            raise ValueError(f"unknown class {label!r}; available: {self.classes}")
        return self.classes.index(label)

    def _gathered(self, role: str) -> tuple[Tensor, Tensor]:
        features, labels = getattr(self, f"{role}_features"), getattr(self, f"{role}_labels")
        if isinstance(features, list) and not features:
            return torch.empty(0, 0, device=self.device), torch.empty(0, dtype=torch.long, device=self.device)
        features, labels = dim_zero_cat(features), dim_zero_cat(labels)
        return features, labels

    def class_pairs(self, min_samples: int = 2) -> Iterator[tuple[int, Tensor, Tensor]]:
        """``(label, real, fake)`` for each class with ``≥ min_samples`` real and synthetic samples."""
        real, real_labels = self._gathered("real")
        fake, fake_labels = self._gathered("fake")
        if real.numel() and fake.numel() and real.shape[1] != fake.shape[1]:
            raise ValueError(f"real features have {real.shape[1]} dims, synthetic ones {fake.shape[1]}")
        for label in torch.unique(real_labels).tolist():
            real_c, fake_c = real[real_labels == label], fake[fake_labels == label]
            if real_c.shape[0] >= min_samples and fake_c.shape[0] >= min_samples:
                yield label, real_c, fake_c


class PerClassMetric(ClassFeatureMetric):
    """Scores each class's real vs synthetic features with :meth:`score`.

    ``compute()`` returns ``{"<name>/<class>": value}`` for every class with ≥ 2 real and ≥ 2 synthetic
    samples, plus ``{"<name>": mean over those classes}``; empty when no class qualifies.
    """

    def score(self, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        """Named scalar scores of one class."""
        raise NotImplementedError

    def compute(self) -> dict[str, Tensor]:
        per_class: dict[str, dict[str, Tensor]] = {}
        for label, real, fake in self.class_pairs():
            for name, value in self.score(real, fake).items():
                per_class.setdefault(name, {})[self.class_name(label)] = value
        result = {}
        for name, values in per_class.items():
            result.update({f"{name}/{cls}": value for cls, value in values.items()})
            result[name] = torch.stack(list(values.values())).mean()
        return result
