"""The sampling-noise calibration: within-class covariances, their low-rank averages and their gap."""

import torch

from a2vgen.nn.calibration import covariance_gap_basis, low_rank_ema, within_group_centered, within_group_factors


def test_within_group_centering_removes_each_groups_mean():
    x = torch.tensor([[1.0], [3.0], [10.0], [14.0], [18.0]])
    centered, dof = within_group_centered(x, torch.tensor([0, 0, 1, 1, 1]))
    assert centered.flatten().tolist() == [-1.0, 1.0, -4.0, 0.0, 4.0]
    assert dof == 3


def test_within_group_factors_give_the_pooled_within_group_covariance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 2, 3, generator=g, dtype=torch.float64)
    groups = torch.arange(12) % 3
    diag, factor = within_group_factors(x, groups)
    expected = sum(torch.cov(x.flatten(1)[groups == k].t(), correction=0) * 4 for k in range(3)) / 9
    assert torch.allclose(factor @ factor.t(), expected)
    assert torch.allclose(diag.flatten(), expected.diagonal())


def test_low_rank_averages_recover_the_directions_the_decoder_misses():
    g = torch.Generator().manual_seed(0)
    axes = torch.linalg.qr(torch.randn(30, 3, generator=g)).Q.double()
    scales = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    data = torch.zeros(4, 30, dtype=torch.float64)
    decoded = torch.zeros(4, 30, dtype=torch.float64)
    one_group = torch.zeros(32, dtype=torch.long)
    for step in range(200):
        coeff = torch.randn(32, 3, generator=g, dtype=torch.float64) * scales
        real = coeff @ axes.t() + 0.1 * torch.randn(32, 30, generator=g, dtype=torch.float64)
        # the decoder reproduces the second axis only: the gap is the first and third
        decoding = coeff[:, 1:2] @ axes[:, 1:2].t() + 0.1 * torch.randn(32, 30, generator=g, dtype=torch.float64)
        momentum = 1.0 if step == 0 else 0.05
        data = low_rank_ema(data, within_group_factors(real, one_group)[1], momentum)
        decoded = low_rank_ema(decoded, within_group_factors(decoding, one_group)[1], momentum)
    gap = covariance_gap_basis(data, decoded)
    along = (gap @ axes).square().sum(0)  # the gap's variance along each true axis
    assert torch.allclose(along[[0, 2]], scales[[0, 2]].square(), rtol=0.25), along
    assert along[1] < 0.25 * scales[1] ** 2, along
    assert gap.square().sum() < 1.3 * (scales[0] ** 2 + scales[2] ** 2)  # no spurious directions
