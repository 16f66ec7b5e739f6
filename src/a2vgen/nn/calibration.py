"""Sampling-noise calibration: the within-class spread that decoded latents do not reproduce.

A VAE trained on tens of clips per class explains part of the class's spread with its latent; the rest
is added at sampling as Gaussian noise whose covariance is the gap between the data's within-class
covariance and that of decoded prior draws. The gap is kept as a diagonal (every element) plus a
low-rank part (the directions the latent misses most, which in audio embeddings span all tokens at
once), both as exponential moving averages over training batches.
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


def covariance_gap(
    real: torch.Tensor, decoded: torch.Tensor, groups: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The within-group covariance of ``real`` minus that of ``decoded`` (both ``[B, ...]``, row ``i``
    of each with the same conditioning), as its diagonal (``real``'s element shape) and a factored form
    ``A diag(s) Aᵀ`` with ``A`` ``[F, 2B]``."""
    r, dof = within_group_centered(real.flatten(1), groups)
    d, _ = within_group_centered(decoded.flatten(1), groups)
    diag = ((r.square() - d.square()).sum(0) / dof).view(real.shape[1:])
    signs = torch.cat([r.new_ones(r.shape[0]), -r.new_ones(d.shape[0])]) / dof
    return diag, torch.cat([r, d]).t(), signs


def _small_eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh`` on one thread: for matrices of a few hundred rows, LAPACK's many short
    parallel sections cost far more than they save, and 100× more on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigh(matrix)
    finally:
        torch.set_num_threads(threads)


def low_rank_ema(
    basis: torch.Tensor, factors: torch.Tensor, signs: torch.Tensor, momentum: float
) -> torch.Tensor:
    """Update ``basis`` ``[r, F]`` (covariance ``basisᵀ basis``) to the top-``r`` positive part of
    ``(1 − momentum) basisᵀ basis + momentum · factors diag(signs) factorsᵀ``.

    Everything is done in the span of the old basis and the new factors ``X`` (``[F, r + k]``): from
    the eigendecomposition of the small Gram matrix ``XᵀX`` and of the update in that span, never with
    an ``F × F`` matrix or a QR of a tall one.
    """
    rank = basis.shape[0]
    stacked = torch.cat([basis.t(), factors.to(basis.dtype)], dim=1)
    weights = torch.cat([basis.new_full((rank,), 1 - momentum), momentum * signs.to(basis.dtype)])
    gram_values, gram_vectors = _small_eigh(stacked.t() @ stacked)
    keep = gram_values > gram_values.max().clamp_min(1e-30) * 1e-6
    gram_values, gram_vectors = gram_values[keep], gram_vectors[:, keep]
    coords = gram_vectors.t() * gram_values.sqrt()[:, None]  # stacked = span @ coords, span orthonormal
    values, vectors = _small_eigh((coords * weights) @ coords.t())
    values, vectors = values[-rank:].clamp_min(0), vectors[:, -rank:]
    span = stacked @ (gram_vectors / gram_values.sqrt())
    top = span @ (vectors * values.sqrt())
    if top.shape[1] < rank:  # fewer directions than the rank: pad with zeros
        top = torch.cat([top.new_zeros(top.shape[0], rank - top.shape[1]), top], dim=1)
    return top.t()
