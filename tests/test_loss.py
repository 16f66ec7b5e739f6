"""The default objective's loss parts follow their definition, for one generator and for stacked ones."""

import math

import pytest
import torch

from a2vgen.nn.loss import calibrated_nll, gaussian_elbo_terms


def definition(recon, target, mu, logvar, min_var):
    """The calibrated Gaussian ELBO's parts as its docstring states them, one generator ``[B, ...]``."""
    sq = (recon - target).pow(2)
    var = sq.mean(0).clamp_min(min_var)  # each element's residual variance over the batch
    nll = 0.5 * (sq / var + var.log() + math.log(2 * math.pi)).flatten(1).sum(1)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
    return {"nll": nll, "kl": kl, "mse": sq.flatten(1).mean(1)}, var


@pytest.mark.parametrize("min_var", [1e-3, 0.5], ids=["floor-unused", "floor-used"])
def test_elbo_parts_follow_the_definition_apart_and_stacked(min_var):
    torch.manual_seed(0)
    k, b = 3, 6
    recon, target = torch.randn(k, b, 4, 5), torch.randn(k, b, 4, 5)
    mu, logvar = torch.randn(k, b, 7), torch.randn(k, b, 7)
    stacked, stacked_var = gaussian_elbo_terms(recon, target, mu, logvar, min_var, sample_dim=1)
    for i in range(k):
        ref, ref_var = definition(recon[i], target[i], mu[i], logvar[i], min_var)
        parts, var = gaussian_elbo_terms(recon[i], target[i], mu[i], logvar[i], min_var)
        for name in ref:
            torch.testing.assert_close(parts[name], ref[name], msg=name)
            torch.testing.assert_close(stacked[name][i], ref[name], msg=name)
        torch.testing.assert_close(var, ref_var)
        torch.testing.assert_close(stacked_var[i], ref_var)


def test_the_calibrated_nll_is_differentiated_through_the_residuals_only():
    """The variance is detached: the gradient of Σ sq / var with respect to sq is 1 / var (halved)."""
    sq = torch.rand(6, 4, 5).requires_grad_()
    nll, var = calibrated_nll(sq)
    (grad,) = torch.autograd.grad(nll.sum(), sq)
    torch.testing.assert_close(grad, (0.5 / var).expand_as(sq))
