"""Per-class comparisons of synthetic with held-out real embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from a2vgen.metrics import functional as MF
from a2vgen.metrics.base import PerClassMetric


class PerClassKID(PerClassMetric):
    """Kernel inception distance per class (``kid/<class>``, lower is better, ≈ 0 for matching sets).

    By default uses all samples of a class. With ``subsets``, averages over that many random subsets of
    ``subset_size`` samples per set (clipped to the smaller set), drawn with a fixed ``seed``.
    """

    def __init__(
        self,
        classes: Sequence[str] | None = None,
        degree: int = 3,
        coef: float = 1.0,
        subsets: int | None = None,
        subset_size: int | None = None,
        seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(classes, **kwargs)
        if subsets is not None and subset_size is None:
            raise ValueError("subsets needs subset_size")
        self.degree, self.coef = degree, coef
        self.subsets, self.subset_size, self.seed = subsets, subset_size, seed

    def score(self, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        if self.subsets is None:
            return {"kid": MF.kernel_inception_distance(real, fake, self.degree, self.coef)}
        size = min(self.subset_size, real.shape[0], fake.shape[0])
        gen = torch.Generator().manual_seed(self.seed)
        values = []
        for _ in range(self.subsets):
            r = torch.randperm(real.shape[0], generator=gen)[:size].to(real.device)
            f = torch.randperm(fake.shape[0], generator=gen)[:size].to(fake.device)
            values.append(MF.kernel_inception_distance(real[r], fake[f], self.degree, self.coef))
        return {"kid": torch.stack(values).mean()}


class PerClassPRDC(PerClassMetric):
    """k-NN precision, recall, density and coverage per class (higher is better; ``k`` clipped to n − 1).

    Precision and density measure fidelity (synthetic samples inside real k-NN balls), recall and
    coverage measure diversity; a collapsed generator loses recall and coverage.
    """

    def __init__(self, classes: Sequence[str] | None = None, k: int = 5, **kwargs) -> None:
        super().__init__(classes, **kwargs)
        self.k = k

    def score(self, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        return MF.precision_recall_density_coverage(real, fake, self.k)


class CentroidCosine(PerClassMetric):
    """Mean cosine of the synthetic samples to the real class centroid (``centroid_cosine/<class>``).

    Blind to diversity: a generator emitting only the centroid scores 1.
    """

    def score(self, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        return {"centroid_cosine": MF.centroid_cosine(real, fake)}


class DiversityRatio(PerClassMetric):
    """Mean pairwise distance of synthetic over real samples (``diversity_ratio/<class>``, ideal 1)."""

    def score(self, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        return {"diversity_ratio": MF.diversity_ratio(real, fake)}
