"""Conditioning encoders: text embeddings of any length and width → one small vector per sample."""

from __future__ import annotations

import torch
from torch import nn


class AttentionPool(nn.Module):
    """Project token states ``[B, S, D]`` to ``width`` and pool them with a learned query."""

    def __init__(self, in_dim: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, width)
        self.score = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        weights = torch.softmax(self.score(torch.tanh(h)), dim=1)
        return (weights * h).sum(dim=1)


class ConditionEncoder(nn.Module):
    """Encode one or more text embeddings into a ``[B, width]`` conditioning vector.

    Each entry of ``cond_shapes`` is the per-sample shape of one conditioning tensor: ``[S, D]`` token
    states (CLIP for Stable Diffusion, T5 for FLUX; any ``S``) are projected and attention-pooled,
    ``[D]`` vectors (FLUX's pooled CLIP) are projected. The projection keeps wide encoders (T5's 4096)
    from inflating the generator.
    """

    def __init__(self, cond_shapes: list[list[int]], width: int = 128) -> None:
        super().__init__()
        if not cond_shapes:
            raise ValueError("ConditionEncoder needs at least one conditioning shape")
        branches: list[nn.Module] = []
        for shape in cond_shapes:
            if len(shape) == 2:
                branches.append(AttentionPool(shape[1], width))
            elif len(shape) == 1:
                branches.append(nn.Linear(shape[0], width))
            else:
                raise ValueError(f"conditioning shape must be [S, D] or [D], got {list(shape)}")
        self.cond_shapes = [list(s) for s in cond_shapes]
        self.branches = nn.ModuleList(branches)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(width * len(branches), width))
        self.width = width

    def forward(self, cond: list[torch.Tensor]) -> torch.Tensor:
        if len(cond) != len(self.branches):
            raise ValueError(f"expected {len(self.branches)} conditioning tensors, got {len(cond)}")
        return self.out(torch.cat([branch(c) for branch, c in zip(self.branches, cond)], dim=-1))
