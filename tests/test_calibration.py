"""The sampling-noise calibration: covariance gaps and their low-rank moving average."""

import torch

from a2vgen.nn.calibration import covariance_gap, low_rank_ema, within_group_centered


def test_within_group_centering_removes_each_groups_mean():
    x = torch.tensor([[1.0], [3.0], [10.0], [14.0], [18.0]])
    centered, dof = within_group_centered(x, torch.tensor([0, 0, 1, 1, 1]))
    assert centered.flatten().tolist() == [-1.0, 1.0, -4.0, 0.0, 4.0]
    assert dof == 3


def test_covariance_gap_is_the_difference_of_within_group_covariances():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(12, 2, 3, generator=g, dtype=torch.float64)
    decoded = 0.5 * torch.randn(12, 2, 3, generator=g, dtype=torch.float64)
    groups = torch.arange(12) % 3
    diag, factors, signs = covariance_gap(real, decoded, groups)
    r, dof = within_group_centered(real.flatten(1), groups)
    d, _ = within_group_centered(decoded.flatten(1), groups)
    expected = (r.t() @ r - d.t() @ d) / dof
    assert torch.allclose((factors * signs) @ factors.t(), expected)
    assert torch.allclose(diag.flatten(), expected.diagonal())


def test_low_rank_average_finds_the_top_directions_of_a_gap():
    g = torch.Generator().manual_seed(0)
    axes = torch.linalg.qr(torch.randn(30, 2, generator=g)).Q.double()
    scales = torch.tensor([3.0, 1.0], dtype=torch.float64)
    basis = torch.zeros(4, 30, dtype=torch.float64)
    for step in range(300):
        real = (torch.randn(64, 2, generator=g, dtype=torch.float64) * scales) @ axes.t()
        real = real + 0.1 * torch.randn(64, 30, generator=g, dtype=torch.float64)
        decoded = 0.1 * torch.randn(64, 30, generator=g, dtype=torch.float64)  # explains nothing but noise
        _, factors, signs = covariance_gap(real, decoded, torch.zeros(64, dtype=torch.long))
        basis = low_rank_ema(basis, factors, signs, 1.0 if step == 0 else 0.05)
    top = torch.linalg.eigvalsh(basis.t() @ basis).flip(0)[:3]
    assert torch.allclose(top[:2], scales.square(), rtol=0.2), top
    assert top[2] < 0.1 * scales[1] ** 2  # the isotropic part is left to the diagonal
    assert torch.allclose((basis @ axes).square().sum(0), scales.square(), rtol=0.2)
