"""Plain tensor functions comparing a set of real features ``[N, F]`` with synthetic ones ``[M, F]``.

All functions compute in float64 on the inputs' device and return 0-dim float64 tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def polynomial_kernel(x: Tensor, y: Tensor, degree: int = 3, coef: float = 1.0) -> Tensor:
    """The KID kernel ``k(x, y) = (x·y / d + coef) ** degree``."""
    return (x.double() @ y.double().T / x.shape[1] + coef) ** degree


def kernel_inception_distance(real: Tensor, fake: Tensor, degree: int = 3, coef: float = 1.0) -> Tensor:
    """Unbiased MMD² with the polynomial kernel (Bińkowski et al., 2018); needs ≥ 2 samples per set."""
    m, n = real.shape[0], fake.shape[0]
    kxx = polynomial_kernel(real, real, degree, coef)
    kyy = polynomial_kernel(fake, fake, degree, coef)
    kxy = polynomial_kernel(real, fake, degree, coef)
    xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return xx + yy - 2 * kxy.mean()


def _cdist(x: Tensor, y: Tensor) -> Tensor:
    return torch.cdist(x.double(), y.double(), compute_mode="donot_use_mm_for_euclid_dist")


def knn_radii(x: Tensor, k: int) -> Tensor:
    """Distance from each row of ``x`` to its ``k``-th nearest other row."""
    return _cdist(x, x).kthvalue(k + 1, dim=1).values


def precision_recall_density_coverage(real: Tensor, fake: Tensor, k: int = 5) -> dict[str, Tensor]:
    """k-NN manifold metrics: improved precision/recall (Kynkäänniemi et al., 2019) and density/coverage
    (Naeem et al., 2020). ``k`` is clipped to ``n - 1`` for each set; needs ≥ 2 samples per set."""
    k_real, k_fake = min(k, real.shape[0] - 1), min(k, fake.shape[0] - 1)
    real_radii, fake_radii = knn_radii(real, k_real), knn_radii(fake, k_fake)
    dist = _cdist(real, fake)  # [N, M]
    in_real_ball = dist <= real_radii[:, None]
    return {
        "precision": in_real_ball.any(0).double().mean(),
        "recall": (dist <= fake_radii[None, :]).any(1).double().mean(),
        "density": in_real_ball.sum(0).double().mean() / k_real,
        "coverage": in_real_ball.any(1).double().mean(),
    }


def centroid_cosine(real: Tensor, fake: Tensor) -> Tensor:
    """Mean cosine similarity of the synthetic samples to the real centroid."""
    centroid = real.double().mean(0, keepdim=True)
    return F.cosine_similarity(fake.double(), centroid, dim=1).mean()


def mean_pairwise_distance(x: Tensor) -> Tensor:
    """Mean Euclidean distance over all pairs of distinct rows."""
    return torch.pdist(x.double()).mean()


def diversity_ratio(real: Tensor, fake: Tensor) -> Tensor:
    """Mean pairwise distance of the synthetic samples over that of the real ones (1 = as diverse)."""
    return mean_pairwise_distance(fake) / mean_pairwise_distance(real)


def _psd_sqrt(c: Tensor) -> Tensor:
    eigvals, eigvecs = torch.linalg.eigh(c)
    return (eigvecs * eigvals.clamp_min(0).sqrt()) @ eigvecs.T


def frechet_distance(x: Tensor, y: Tensor) -> Tensor:
    """``‖μx − μy‖² + tr(Cx + Cy − 2 (Cx Cy)^½)`` of Gaussians fitted to two sample sets.

    The trace of ``(Cx Cy)^½`` is taken as the sum of square roots of the eigenvalues of the symmetric
    ``Cx^½ Cy Cx^½``, which works on any device and for rank-deficient covariances.
    """
    x, y = x.double(), y.double()
    cx, cy = torch.cov(x.T), torch.cov(y.T)
    sx = _psd_sqrt(cx)
    middle = sx @ cy @ sx
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return (x.mean(0) - y.mean(0)).square().sum() + cx.trace() + cy.trace() - 2 * trace_sqrt


def pca_projection(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Mean ``[F]`` and orthonormal top-``dim`` principal axes ``[F, dim']`` of ``x``.

    Uses the eigendecomposition of the smaller of the Gram ``[N, N]`` and covariance ``[F, F]``
    matrices; ``dim'`` drops axes of (numerically) zero variance, so ``dim' ≤ min(dim, rank)``.
    """
    x = x.double()
    mean = x.mean(0)
    xc = x - mean
    gram = x.shape[0] < x.shape[1]
    eigvals, eigvecs = torch.linalg.eigh(xc @ xc.T if gram else xc.T @ xc)
    keep = eigvals > eigvals[-1] * x.shape[1] * torch.finfo(x.dtype).eps
    eigvals, eigvecs = eigvals[keep].flip(0)[:dim], eigvecs[:, keep].flip(1)[:, :dim]
    return mean, (xc.T @ eigvecs / eigvals.sqrt() if gram else eigvecs)
