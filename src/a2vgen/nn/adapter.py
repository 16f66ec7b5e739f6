"""Audio→prompt adapter: audio-token embeddings to a diffusion pipeline's prompt embeddings."""

from __future__ import annotations

import torch
from torch import nn


class PromptHead(nn.Module):
    """One prompt tensor from a hidden vector: ``[S, D]`` token states (low-rank per token) or ``[D]``."""

    def __init__(self, hidden_dim: int, shape: list[int], rank: int) -> None:
        super().__init__()
        self.shape = list(shape)
        if len(shape) == 2:
            tokens, dim = shape
            self.base = nn.Parameter(torch.zeros(tokens, dim))
            self.coeff = nn.Linear(hidden_dim, tokens * rank)
            self.basis = nn.Linear(rank, dim, bias=False)
            self.rank = rank
        elif len(shape) == 1:
            self.out = nn.Linear(hidden_dim, shape[0])
        else:
            raise ValueError(f"prompt shape must be [S, D] or [D], got {list(shape)}")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if len(self.shape) == 1:
            return self.out(h)
        coeff = self.coeff(h).view(h.shape[0], self.shape[0], self.rank)
        return self.base + self.basis(coeff)


class AudioPromptAdapter(nn.Module):
    """Map audio tokens ``[B, L, D_a]`` to prompt embeddings, one tensor per entry of ``prompt_shapes``.

    Stable Diffusion: ``[[77, 768]]`` (CLIP states); FLUX: ``[[S, 4096], [768]]`` (T5 states, pooled
    CLIP). Token states are a learned per-position base plus a low-rank, audio-dependent part, so wide
    prompt spaces stay small.
    """

    def __init__(
        self, audio_shape: list[int], prompt_shapes: list[list[int]], hidden_dim: int = 512, rank: int = 16
    ) -> None:
        super().__init__()
        if not prompt_shapes:
            raise ValueError("the adapter needs the prompt shapes of the pipeline (its conditioning shapes)")
        self.trunk = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(audio_shape[0] * audio_shape[1], hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.SiLU(),
        )
        self.heads = nn.ModuleList(PromptHead(hidden_dim, shape, rank) for shape in prompt_shapes)

    def forward(self, audio: torch.Tensor) -> list[torch.Tensor]:
        h = self.trunk(audio)
        return [head(h) for head in self.heads]
