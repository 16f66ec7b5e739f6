"""Fréchet distance pooled over classes, beside a real-vs-real baseline at the same sample sizes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from a2vgen.metrics import functional as MF
from a2vgen.metrics.base import ClassFeatureMetric


class PooledFrechetDistance(ClassFeatureMetric):
    """Fréchet distance of synthetic vs real features, pooled over classes, with its real baseline.

    Fréchet distance is strongly biased at small n, so the raw value means little alone. Each class's
    real samples are split at random (fixed ``seed``) into a reference half ``A`` and a held-out half
    ``B``; the synthetic set of the class is subsampled to ``|B|`` (or ``B`` to the synthetic count if
    fewer). Pooled over classes, ``compute()`` returns ``{"frechet": FD(A, synthetic),
    "frechet_baseline": FD(A, B)}``: both use the same sizes, so a good generator's ``frechet`` is
    close to ``frechet_baseline``. Only classes with ≥ 2 real and ≥ 2 synthetic samples count.
    With ``pca_dim``, all three sets are first projected on the top principal axes of their union, which
    keeps covariances well-conditioned at small n and keeps the directions in which the synthetic set
    departs from the real one; ``None`` keeps all dimensions.
    """

    def __init__(self, classes: Sequence[str] | None = None, pca_dim: int | None = 32, seed: int = 0, **kwargs) -> None:
        super().__init__(classes, **kwargs)
        self.pca_dim, self.seed = pca_dim, seed

    def compute(self) -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        ref, held, synth = [], [], []
        for _, real, fake in self.class_pairs(min_samples=2):
            perm = torch.randperm(real.shape[0], generator=gen).to(real.device)
            half = real.shape[0] // 2
            size = min(half, fake.shape[0])
            ref.append(real[perm[half:]])
            held.append(real[perm[:size]])
            synth.append(fake[torch.randperm(fake.shape[0], generator=gen)[:size].to(fake.device)])
        if not ref:
            return {}
        a, b, f = torch.cat(ref).double(), torch.cat(held).double(), torch.cat(synth).double()
        if self.pca_dim is not None:
            mean, axes = MF.pca_projection(torch.cat([a, b, f]), self.pca_dim)
            a, b, f = ((x - mean) @ axes for x in (a, b, f))
        return {"frechet": MF.frechet_distance(a, f), "frechet_baseline": MF.frechet_distance(a, b)}
