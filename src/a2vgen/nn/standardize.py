"""Per-element standardization kept as buffers, so it travels with a network's weights."""

from __future__ import annotations

import torch
from torch import nn


class Standardizer(nn.Module):
    """``z = (x - mean) / std`` per element of a ``shape``-shaped feature, and its inverse.

    The statistics are buffers (identity until :meth:`set_statistics`): they are saved, loaded, shared,
    averaged and reset with the network that owns them, and sampling inverts them.
    """

    def __init__(self, shape: list[int] | tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(*shape))
        self.register_buffer("std", torch.ones(*shape))

    @torch.no_grad()
    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor, floor: float = 1e-3) -> None:
        """Use ``mean`` and ``std``; ``std`` is floored at ``floor`` × its average, so that nearly constant
        elements are not blown up. All-zero ``std`` leaves the identity in place."""
        scale = float(std.mean())
        if not scale > 0:  # nothing varies (e.g. placeholder statistics): keep the identity
            return
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(floor * scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean
