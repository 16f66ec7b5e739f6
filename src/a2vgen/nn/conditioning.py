"""Conditioning encoders: text embeddings of any length and width → one small vector per sample."""

from __future__ import annotations

import weakref

import torch
from torch import nn

from a2vgen.nn.standardize import Standardizer


class AttentionPool(nn.Module):
    """Project token states ``[B, S, D]`` to ``width``, pool them with learned attention, normalize.

    The attention weights start uniform and sum to ``S`` (a sum over tokens, not a mean), and the
    projection has no bias: with inputs standardized across classes, tokens that no class changes are
    zero and add nothing, so a class name that changes one token of 77 is not diluted 77 times. A
    LayerNorm keeps the pooled vector's scale independent of how many tokens differ.
    """

    def __init__(self, in_dim: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, width, bias=False)
        self.score = nn.Linear(width, 1)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        weights = torch.softmax(self.score(torch.tanh(h)), dim=1) * h.shape[1]
        return self.norm((weights * h).sum(dim=1))


class ConditionEncoder(nn.Module):
    """Encode one or more text embeddings into a ``[B, width]`` conditioning vector.

    Each entry of ``cond_shapes`` is the per-sample shape of one conditioning tensor: ``[S, D]`` token
    states (CLIP for Stable Diffusion, T5 for FLUX; any ``S``) are projected and attention-pooled,
    ``[D]`` vectors (FLUX's pooled CLIP) are projected. The projection keeps wide encoders (T5's 4096)
    from inflating the generator.

    Each input is first standardized per element with statistics over the class set (see
    :meth:`set_statistics`): prompts of one template differ in a few tokens only (a few percent of the
    embedding's energy), and standardizing across classes turns those differences into unit-scale
    inputs. An unseen prompt goes through the same statistics.
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
        self.standardize = nn.ModuleList(Standardizer(shape) for shape in self.cond_shapes)
        self.branches = nn.ModuleList(branches)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(width * len(branches), width))
        self.width = width

    def forward(self, cond: list[torch.Tensor]) -> torch.Tensor:
        if len(cond) != len(self.branches):
            raise ValueError(f"expected {len(self.branches)} conditioning tensors, got {len(cond)}")
        parts = [branch(norm(c)) for branch, norm, c in zip(self.branches, self.standardize, cond)]
        return self.out(torch.cat(parts, dim=-1))

    def set_statistics(self, class_cond: list[torch.Tensor]) -> None:
        """Standardize each input with the mean and std over the rows of ``class_cond`` (``[C, *shape]``;
        with one class only the mean is removed). Elements that vary across classes less than a tenth of
        the average stay damped, so that an unseen prompt's new tokens are not blown up."""
        for norm, rows in zip(self.standardize, class_cond):
            norm.set_statistics(*row_statistics(rows), floor=0.1)


_ROW_STATS: list[tuple[weakref.ref, int, tuple[torch.Tensor, torch.Tensor]]] = []


def row_statistics(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (1 with a single row) over the rows of ``rows``, computed in double precision.

    Every generator of a module standardizes with the same class rows, so the result for the last few
    tensors is kept while the very same tensor comes back unmodified (same object and version counter).
    """
    for ref, version, stats in _ROW_STATS:
        if ref() is rows and version == rows._version:
            return stats
    double = rows.double()
    std = double.std(0) if rows.shape[0] > 1 else torch.ones_like(double[0])
    stats = (double.mean(0).float(), std.float())
    _ROW_STATS[:] = [(weakref.ref(rows), rows._version, stats), *_ROW_STATS[:3]]
    return stats
