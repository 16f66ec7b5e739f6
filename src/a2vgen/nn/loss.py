"""Generator losses: a calibrated Gaussian ELBO (the default) and the original system's
``MSE + β·KL + w·(1 − cos)``, both scheduled by the generator's age in epochs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class VAELossSchedule:
    """β rises linearly from 0 to ``beta_max`` over ``beta_warmup_epochs``; the cosine weight decays
    linearly from ``sim_weight_start`` to ``sim_weight_end`` over ``sim_decay_epochs``."""

    beta_max: float = 0.01
    beta_warmup_epochs: int = 5
    sim_weight_start: float = 0.1
    sim_weight_end: float = 0.01
    sim_decay_epochs: int = 10

    def beta(self, age: torch.Tensor) -> torch.Tensor:
        return self.beta_max * (age.float() / max(self.beta_warmup_epochs, 1)).clamp(max=1.0)

    def sim_weight(self, age: torch.Tensor) -> torch.Tensor:
        t = (age.float() / max(self.sim_decay_epochs, 1)).clamp(max=1.0)
        return self.sim_weight_start + (self.sim_weight_end - self.sim_weight_start) * t


def vae_loss_terms(
    recon: torch.Tensor, target: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-sample loss parts (each ``[B]``): element-mean MSE, latent-mean KL, token-mean ``1 − cos``."""
    mse = F.mse_loss(recon, target, reduction="none").flatten(1).mean(dim=1)
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).mean(dim=1)
    cos = 1 - F.cosine_similarity(recon, target, dim=-1).mean(dim=1)
    return {"mse": mse, "kl": kl, "cos": cos}


LOG_2PI = math.log(2 * math.pi)


def calibrated_nll(sq: torch.Tensor, min_var: float = 1e-3, sample_dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``0.5 · Σ (sq / var + log var)`` per sample for squared residuals ``sq`` (``[B, ...]``, or ``[K, B, ...]``
    with ``sample_dim=1``), ``var`` being each element's mean over the samples (detached, floored at
    ``min_var``): a Gaussian NLL at its maximum-likelihood variance, without the ``log 2π`` terms. Returns the
    NLL (``[B]`` / ``[K, B]``) and ``var`` (the sample axis kept, of size 1)."""
    var = sq.detach().mean(sample_dim, keepdim=True).clamp_min(min_var)
    # log var does not depend on the sample: summed once per batch, not once per sample
    nll = 0.5 * ((sq / var).flatten(sample_dim + 1).sum(-1) + var.log().flatten(sample_dim + 1).sum(-1))
    return nll, var


def gaussian_elbo_terms(
    recon: torch.Tensor,
    target: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    min_var: float = 1e-3,
    sample_dim: int = 0,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-sample parts of a Gaussian-decoder ELBO with a calibrated decoder variance.

    The decoder variance of each element is its residual variance over the batch (detached): the
    maximum-likelihood value for the current decoder (σ-VAE, Rybkin et al. 2021), floored at ``min_var``.
    The reconstruction is then weighed against the KL at its true scale, which keeps the latent in use
    where an element-mean MSE with a small β lets it collapse to the prior. Returns ``nll`` (summed over
    elements), ``kl`` (summed over latent dimensions), ``mse`` (element mean, for reading), each ``[B]``,
    and the per-element variance used (``target``'s shape without the batch axis). ``sample_dim=1`` scores
    stacked generators' outputs ``[K, B, ...]``, each over its own batch: parts ``[K, B]``, variance ``[K, ...]``.
    """
    sq = (recon - target).pow(2)
    nll, var = calibrated_nll(sq, min_var, sample_dim)
    nll = nll + 0.5 * LOG_2PI * math.prod(sq.shape[sample_dim + 1 :])
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(-1)
    return {"nll": nll, "kl": kl, "mse": sq.flatten(sample_dim + 1).mean(-1)}, var.squeeze(sample_dim)
