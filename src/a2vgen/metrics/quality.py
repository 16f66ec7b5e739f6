"""Per-class quality scores that a collapsed or copying generator cannot pass, with their references.

For one class, ``train`` are the real clips the generator learned from, ``held`` real clips it never saw
and ``fake`` its samples (features ``[N, F]``; see :func:`features`). Every score is a ratio against
real data, so 1 is "as good as a fresh draw of real clips":

- ``fd_ratio``: Fréchet distance of ``fake`` to ``held`` over that of ``train`` to ``held``, both at the
  same ``n`` (``|held|``, and at most ``|train|``), averaged over repeated subsamples, after projecting
  on the top ``pca_dim`` principal axes of the class's real clips (n tens of samples cannot fill a
  covariance of hundreds of dimensions).
- ``diversity_ratio``: mean pairwise distance within ``fake`` over that within ``held`` (collapse → 0).
- ``recall``: share of ``held`` clips inside the ``k``-NN ball of some synthetic sample, ``fake``
  subsampled to ``|held|`` so that radii compare (collapse → 0).
- ``memorization_ratio``: median distance from a synthetic sample to its nearest training clip over the
  same for held-out clips (copies of training clips → 0; ≥ 0.9 means no closer than new real data).

:func:`reference_samplers` gives the scores' references: the class centroid (collapse floor), a Gaussian
with the training clips' mean and low-rank-plus-diagonal covariance (a strong simple baseline), and
training clips resampled (the ceiling for fidelity, the floor for memorization).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from a2vgen.metrics import functional as MF

SCORES = ("fd_ratio", "diversity_ratio", "recall", "memorization_ratio")
COLLAPSE_DIVERSITY = 0.3
MIN_HELD = 8


def features(x: Tensor, pooling: str = "mean") -> Tensor:
    """``[N, L, D]`` audio tokens as ``[N, F]`` vectors: token mean (``"mean"``) or all tokens (``"flat"``)."""
    if x.dim() == 2:
        return x.double()
    if pooling == "mean":
        return x.double().mean(dim=1)
    if pooling == "flat":
        return x.double().flatten(1)
    raise ValueError(f"pooling must be 'mean' or 'flat', got {pooling!r}")


def frechet_ratio(
    train: Tensor, held: Tensor, fake: Tensor, pca_dim: int = 8, repeats: int = 32, seed: int = 0
) -> dict[str, float]:
    """``fd`` (fake vs held), ``fd_baseline`` (train vs held) at equal ``n`` and their ratio ``fd_ratio``."""
    real = torch.cat([train, held])
    mean, axes = MF.pca_projection(real, pca_dim)
    t, h, f = ((x.double() - mean) @ axes for x in (train, held, fake))
    n = min(h.shape[0], t.shape[0], f.shape[0])
    gen = torch.Generator().manual_seed(seed)
    fd = base = 0.0
    for _ in range(repeats):
        hs = h[torch.randperm(h.shape[0], generator=gen)[:n]]
        fd += float(MF.frechet_distance(f[torch.randperm(f.shape[0], generator=gen)[:n]], hs))
        base += float(MF.frechet_distance(t[torch.randperm(t.shape[0], generator=gen)[:n]], hs))
    fd, base = fd / repeats, base / repeats
    return {"fd": fd, "fd_baseline": base, "fd_ratio": fd / max(base, 1e-12)}


def knn_recall(held: Tensor, fake: Tensor, k: int = 3, seed: int = 0) -> float:
    """Share of ``held`` inside some synthetic sample's ``k``-NN ball (synthetic subsampled to ``|held|``)."""
    gen = torch.Generator().manual_seed(seed)
    f = fake[torch.randperm(fake.shape[0], generator=gen)[: held.shape[0]]]
    k = min(k, f.shape[0] - 1)
    radii = MF.knn_radii(f, k)
    return float((MF._cdist(held, f) <= radii[None, :]).any(1).double().mean())


def memorization_ratio(train: Tensor, held: Tensor, fake: Tensor) -> float:
    """Median nearest-training-clip distance of synthetic samples over that of held-out clips."""
    fake_nn = MF._cdist(fake, train).min(1).values.median()
    held_nn = MF._cdist(held, train).min(1).values.median()
    return float(fake_nn / held_nn.clamp_min(1e-12))


def class_quality(
    train: Tensor, held: Tensor, fake: Tensor, pca_dim: int = 8, repeats: int = 32, k: int = 3, seed: int = 0
) -> dict[str, float]:
    """Every score of the module docstring for one class (features ``[N, F]``; ``held`` ≥ 2 clips)."""
    train, held, fake = train.double(), held.double(), fake.double()
    out = frechet_ratio(train, held, fake, pca_dim, repeats, seed)
    out["diversity_ratio"] = float(MF.diversity_ratio(held, fake))
    out["recall"] = knn_recall(held, fake, k, seed)
    out["memorization_ratio"] = memorization_ratio(train, held, fake)
    return out


def reference_samplers(train: Tensor, rank: int = 8, seed: int = 0) -> dict[str, Callable[[int], Tensor]]:
    """``n → samples`` of the three references, fitted to one class's training features ``[N, F]``.

    ``gaussian`` has covariance ``U diag(λ) Uᵀ + diag(residual)``: the top-``rank`` principal axes of the
    training clips plus each dimension's remaining variance.
    """
    x = train.double()
    mean = x.mean(0)
    xc = x - mean
    r = min(rank, x.shape[0] - 1)
    u, s, vh = torch.linalg.svd(xc, full_matrices=False)
    scale = s[:r] / (x.shape[0] - 1) ** 0.5
    axes = vh[:r]
    residual = (xc - (xc @ axes.T) @ axes).var(0).sqrt()
    gen = torch.Generator().manual_seed(seed)

    def gaussian(n: int) -> Tensor:
        z = torch.randn(n, r, generator=gen, dtype=x.dtype)
        return mean + (z * scale) @ axes + torch.randn(n, x.shape[1], generator=gen, dtype=x.dtype) * residual

    return {
        "centroid": lambda n: mean.expand(n, -1).clone(),
        "gaussian": gaussian,
        "resampled": lambda n: x[torch.randint(x.shape[0], (n,), generator=gen)],
    }
