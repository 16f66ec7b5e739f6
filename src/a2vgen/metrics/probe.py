"""A linear probe trained on real embeddings that judges whether synthetic ones carry their class."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from a2vgen.metrics.base import ClassFeatureMetric, Labels


@dataclass
class LinearProbe:
    """Multinomial logistic regression on standardized features."""

    mean: Tensor
    std: Tensor
    weight: Tensor
    bias: Tensor

    def predict(self, x: Tensor) -> Tensor:
        """Predicted class index per row of ``x``."""
        z = (x.double() - self.mean) / self.std
        return (z @ self.weight.T + self.bias).argmax(1)


def fit_linear_probe(
    x: Tensor, y: Tensor, num_classes: int, weight_decay: float = 1e-3, max_iter: int = 100
) -> LinearProbe:
    """Fit an L2-regularized softmax regression with full-batch L-BFGS from zero weights.

    The objective is strictly convex and the start fixed, so the fit is deterministic. Works inside
    ``torch.inference_mode`` (e.g. Lightning validation): the fit runs with autograd re-enabled.
    """
    with torch.inference_mode(False), torch.enable_grad():
        x, y = x.double().clone(), y.clone()
        mean, std = x.mean(0), x.std(0)
        std = torch.where(std > 1e-8, std, torch.ones_like(std))
        z = (x - mean) / std
        weight = torch.zeros(num_classes, z.shape[1], dtype=z.dtype, device=z.device, requires_grad=True)
        bias = torch.zeros(num_classes, dtype=z.dtype, device=z.device, requires_grad=True)
        opt = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(z @ weight.T + bias, y) + 0.5 * weight_decay * weight.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
    return LinearProbe(mean, std, weight.detach(), bias.detach())


class SyntheticClassAccuracy(ClassFeatureMetric):
    """Accuracy of a linear probe, fitted on real training embeddings of all classes, on synthetic
    samples of each class, reported beside its accuracy on held-out real embeddings.

    ``update(train=..., train_labels=...)`` adds probe training data; ``real``/``fake`` (with their
    labels) add held-out real and synthetic samples. ``compute()`` fits the probe once on all training
    data (deterministic, so every process gets the same probe) and returns
    ``synthetic_accuracy/<class>`` and ``real_accuracy/<class>`` for each class with such samples, plus
    their means over classes ``synthetic_accuracy`` and ``real_accuracy``. The number of classes is
    ``len(classes)``, else one more than the largest label seen.
    """

    higher_is_better = True
    roles = ("train", "real", "fake")

    def __init__(
        self,
        classes: Sequence[str] | None = None,
        weight_decay: float = 1e-3,
        max_iter: int = 100,
        **kwargs,
    ) -> None:
        super().__init__(classes, **kwargs)
        self.weight_decay, self.max_iter = weight_decay, max_iter

    def update(
        self,
        real: Tensor | None = None,
        fake: Tensor | None = None,
        real_labels: Labels = None,
        fake_labels: Labels = None,
        train: Tensor | None = None,
        train_labels: Labels = None,
    ) -> None:
        """Add probe training features and/or held-out real and synthetic features."""
        self._append("train", train, train_labels)
        super().update(real, fake, real_labels, fake_labels)

    def compute(self) -> dict[str, Tensor]:
        x, y = self._gathered("train")
        if not y.numel():
            raise RuntimeError("SyntheticClassAccuracy needs training features: update(train=..., ...)")
        sets = {role: self._gathered(role) for role in ("fake", "real")}
        seen = [y, *(labels for _, labels in sets.values() if labels.numel())]
        num_classes = len(self.classes) if self.classes is not None else 1 + max(int(s.max()) for s in seen)
        probe = fit_linear_probe(x, y, num_classes, self.weight_decay, self.max_iter)
        result = {}
        for role, name in (("fake", "synthetic_accuracy"), ("real", "real_accuracy")):
            features, labels = sets[role]
            if not labels.numel():
                continue
            correct = (probe.predict(features) == labels).double()
            per_class = {int(c): correct[labels == c].mean() for c in torch.unique(labels).tolist()}
            result.update({f"{name}/{self.class_name(c)}": acc for c, acc in per_class.items()})
            result[name] = torch.stack(list(per_class.values())).mean()
        return result
