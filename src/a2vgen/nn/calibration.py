"""Sampling-noise calibration: the within-class spread that decoded latents do not reproduce.

A VAE trained on tens of clips per class explains part of the class's spread with its latent; the rest
is added at sampling as Gaussian noise whose covariance is the gap between the data's within-class
covariance and that of decoded prior draws: its diagonal (every element) and a low-rank part (the
directions the latent misses most, which in audio embeddings span all tokens at once). Both
covariances are kept as exponential moving averages over training batches, each truncated to its top
directions (a truncated average of the gap itself would keep every batch's positive noise and drop its
negative noise, and overshoot).
"""

from __future__ import annotations

import torch


def within_group_centered(x: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``x`` ``[B, ...]`` minus its group means (``groups``: ``[B]`` integer labels), and the degrees of
    freedom left (``B`` − number of groups, at least 1)."""
    dof_one = max(x.shape[0] - 1, 1)
    if bool((groups == groups[0]).all()):
        return x - x.mean(0, keepdim=True), dof_one
    _, inverse, counts = groups.unique(return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), *x.shape[1:], dtype=x.dtype, device=x.device).index_add_(0, inverse, x)
    means = sums / counts.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return x - means[inverse], max(x.shape[0] - len(counts), 1)


def within_group_factors(x: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The within-group covariance of ``x`` ``[B, ...]`` as its diagonal (``x``'s element shape) and a
    factor ``A`` ``[F, B]`` with covariance ``A Aᵀ``."""
    centered, dof = within_group_centered(x.flatten(1), groups)
    factor = centered.t() / dof**0.5
    return factor.square().sum(1).view(x.shape[1:]), factor


def _small_eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` on one thread: for matrices of a few hundred rows, LAPACK's many short
    parallel sections cost far more than they save, and 100× more on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigh(matrix)
    finally:
        torch.set_num_threads(threads)


def top_positive(factors: torch.Tensor, weights: torch.Tensor, rank: int) -> torch.Tensor:
    """The top-``rank`` positive part of ``factors diag(weights) factorsᵀ`` (``factors``: ``[F, k]``) as a
    basis ``[rank, F]`` (covariance ``basisᵀ basis``).

    Everything is done in the span of the factors: from the eigendecomposition of the small Gram matrix
    ``factorsᵀ factors`` and of the matrix in that span, never with an ``F × F`` matrix or a QR of a
    tall one.
    """
    gram_values, gram_vectors = _small_eigh(factors.t() @ factors)
    keep = gram_values > gram_values.max().clamp_min(1e-30) * 1e-6
    gram_values, gram_vectors = gram_values[keep], gram_vectors[:, keep]
    coords = gram_vectors.t() * gram_values.sqrt()[:, None]  # factors = span @ coords, span orthonormal
    values, vectors = _small_eigh((coords * weights) @ coords.t())
    values, vectors = values[-rank:].clamp_min(0), vectors[:, -rank:]
    top = factors @ (gram_vectors / gram_values.sqrt()) @ (vectors * values.sqrt())
    if top.shape[1] < rank:  # fewer directions than the rank: pad with zeros
        top = torch.cat([top.new_zeros(top.shape[0], rank - top.shape[1]), top], dim=1)
    return top.t()


def low_rank_ema(basis: torch.Tensor, factor: torch.Tensor, momentum: float) -> torch.Tensor:
    """``basis`` ``[r, F]`` moved ``momentum`` of the way towards the covariance ``factor factorᵀ``
    (``factor``: ``[F, k]``), truncated to its top ``r`` directions."""
    rank = basis.shape[0]
    weights = torch.cat([basis.new_full((rank,), 1 - momentum), basis.new_full((factor.shape[1],), momentum)])
    return top_positive(torch.cat([basis.t(), factor.to(basis.dtype)], dim=1), weights, rank)


def covariance_gap_basis(data: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
    """The top directions ``[r, F]`` of ``dataᵀ data − decodedᵀ decoded`` (bases ``[r, F]`` each)."""
    rank = data.shape[0]
    weights = torch.cat([data.new_ones(rank), -data.new_ones(decoded.shape[0])])
    return top_positive(torch.cat([data, decoded]).t(), weights, rank)
