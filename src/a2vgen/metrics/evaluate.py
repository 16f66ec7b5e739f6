"""One call that scores every class's generator against held-out real embeddings."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor
from torchmetrics import MetricCollection

from a2vgen.metrics.frechet import PooledFrechetDistance
from a2vgen.metrics.per_class import CentroidCosine, DiversityRatio, PerClassKID, PerClassPRDC
from a2vgen.metrics.probe import SyntheticClassAccuracy


def evaluate_generators(
    real: Mapping[str, Tensor],
    sample: Callable[[str, int], Tensor],
    num_samples: int | None = None,
    train: Mapping[str, Tensor] | None = None,
    k: int = 5,
    pca_dim: int | None = 32,
) -> dict[str, float]:
    """Score synthetic against held-out real features for every class of ``real``.

    Args:
        real: class name -> held-out real features ``[N, ...]``.
        sample: ``sample(class_name, n)`` -> ``n`` synthetic features of that class (run without grad).
        num_samples: synthetic samples per class; default: as many as the class's real samples.
        train: class name -> real training features; adds the linear-probe accuracies when given.
        k: neighbours for precision/recall/density/coverage.
        pca_dim: PCA dimensions for the pooled Fréchet distance (``None``: all).

    Returns:
        A flat ``{"metric/class": value, "metric": mean over classes, ...}`` dict of floats with KID,
        precision, recall, density, coverage, centroid cosine, diversity ratio, the pooled
        ``frechet``/``frechet_baseline`` and, with ``train``, ``synthetic_accuracy``/``real_accuracy``.
    """
    classes = list(dict.fromkeys([*real, *(train or {})]))
    metrics = MetricCollection(
        [
            PerClassKID(classes),
            PerClassPRDC(classes, k=k),
            CentroidCosine(classes),
            DiversityRatio(classes),
            PooledFrechetDistance(classes, pca_dim=pca_dim),
        ],
        compute_groups=True,
    )
    probe = SyntheticClassAccuracy(classes) if train is not None else None
    for cls, features in real.items():
        with torch.no_grad():
            fake = sample(cls, num_samples or features.shape[0])
        metrics.update(real=features, fake=fake, real_labels=cls, fake_labels=cls)
        if probe is not None:
            probe.update(real=features, fake=fake, real_labels=cls, fake_labels=cls)
    if probe is not None:
        for cls, features in train.items():
            probe.update(train=features, train_labels=cls)
    results = metrics.compute()
    if probe is not None:
        results.update(probe.compute())
    return {key: float(value) for key, value in results.items()}
