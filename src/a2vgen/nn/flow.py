"""Conditional flow matching (rectified flow) over flattened audio tokens ``[B, L, D]``."""

from __future__ import annotations

import math

import torch
from torch import nn

from a2vgen.nn.conditioning import ConditionEncoder
from a2vgen.nn.registry import register_generator


def time_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features ``[B, dim]`` of times ``t`` in ``[0, 1]`` (``[B]``)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=t.dtype) * (-math.log(1000.0) / max(half - 1, 1)))
    angles = 1000.0 * t[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ResidualBlock(nn.Module):
    """``h + Linear(SiLU(Linear(SiLU(LayerNorm(h)))))``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.body(h)


@register_generator(name="ConditionalFlow")
class ConditionalFlow(nn.Module):
    """``p(audio | cond)`` as a velocity field ``v(x_t, t, cond)`` that carries ``N(0, I)`` to the data.

    Trained by flow matching on straight paths ``x_t = (1 − t)·x_0 + t·x_1`` (see :meth:`loss`); sampled
    by integrating ``dx/dt = v`` from ``t = 0`` to ``1`` with ``steps`` Euler or Heun steps.

    Args:
        audio_shape: ``[L, D_a]`` of one sample.
        cond_shapes: per-sample conditioning shapes (see :class:`~a2vgen.nn.conditioning.ConditionEncoder`);
            ``[]`` gives an unconditioned flow.
        hidden_dim: width of the residual MLP.
        num_blocks: residual blocks.
        cond_width: width of the conditioning vector.
        time_dim: width of the time features.
        steps: integration steps of :meth:`sample`.
        solver: ``"euler"`` or ``"heun"`` (second order, two velocity evaluations a step).
    """

    def __init__(
        self,
        audio_shape: list[int],
        cond_shapes: list[list[int]],
        hidden_dim: int = 1024,
        num_blocks: int = 3,
        cond_width: int = 128,
        time_dim: int = 64,
        steps: int = 32,
        solver: str = "heun",
    ) -> None:
        super().__init__()
        if solver not in ("euler", "heun"):
            raise ValueError(f"solver must be 'euler' or 'heun', got {solver!r}")
        self.config = {"audio_shape": list(audio_shape), "cond_shapes": [list(s) for s in cond_shapes],
                       "hidden_dim": hidden_dim, "num_blocks": num_blocks, "cond_width": cond_width,
                       "time_dim": time_dim, "steps": steps, "solver": solver}  # fmt: skip
        self.audio_shape = (int(audio_shape[0]), int(audio_shape[1]))
        self.time_dim, self.steps, self.solver = time_dim, steps, solver
        flat = self.audio_shape[0] * self.audio_shape[1]
        self.cond_encoder = ConditionEncoder(cond_shapes, cond_width) if cond_shapes else None
        context = time_dim + (cond_width if cond_shapes else 0)
        self.input = nn.Linear(flat, hidden_dim)
        self.context = nn.Sequential(nn.Linear(context, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim))
        self.blocks = nn.Sequential(*(ResidualBlock(hidden_dim) for _ in range(num_blocks)))
        self.output = nn.Sequential(nn.LayerNorm(hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, flat))

    def condition(self, cond: list[torch.Tensor] | None, cond_index: torch.Tensor | None = None) -> torch.Tensor | None:
        """Conditioning vectors per sample; with ``cond_index``, distinct rows are encoded once and picked."""
        if self.cond_encoder is None:
            return None
        if cond is None:
            raise ValueError("this flow is conditional: pass the conditioning tensors")
        encoded = self.cond_encoder(cond)
        return encoded if cond_index is None else encoded[cond_index]

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """Velocity ``[B, L, D]`` at points ``x`` ``[B, L, D]``, times ``t`` ``[B]``, conditioning vectors ``c``."""
        context = time_features(t, self.time_dim)
        if c is not None:
            context = torch.cat([context, c], dim=-1)
        h = self.blocks(self.input(x.flatten(1)) + self.context(context))
        return self.output(h).view_as(x)

    def loss(
        self, x1: torch.Tensor, cond: list[torch.Tensor] | None = None, cond_index: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-sample flow-matching loss parts ``[B]``: ``loss`` is the velocity MSE on a random time of
        the straight path from noise to ``x1``; ``x1_mse`` is the one-step estimate of ``x1`` from there
        (a diagnostic)."""
        x0 = torch.randn_like(x1)
        t = torch.rand(x1.shape[0], device=x1.device, dtype=x1.dtype)
        tb = t.view(-1, *([1] * (x1.dim() - 1)))
        xt = (1 - tb) * x0 + tb * x1
        v = self(xt, t, self.condition(cond, cond_index))
        loss = (v - (x1 - x0)).pow(2).flatten(1).mean(dim=1)
        x1_mse = (xt + (1 - tb) * v.detach() - x1).pow(2).flatten(1).mean(dim=1)
        return {"loss": loss, "x1_mse": x1_mse}

    @torch.no_grad()
    def sample(
        self,
        n: int,
        cond: list[torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
        cond_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draw ``n`` samples; conditioning per sample, one row for all, or rows picked by ``cond_index``."""
        device = next(self.parameters()).device
        if cond is not None and cond_index is None and cond[0].shape[0] == 1:
            cond_index = torch.zeros(n, dtype=torch.long, device=device)
        c = self.condition(cond, cond_index)
        x = torch.randn(n, *self.audio_shape, generator=generator, device=device)
        dt = 1.0 / self.steps
        for i in range(self.steps):
            t = torch.full((n,), i * dt, device=device)
            v = self(x, t, c)
            if self.solver == "heun":
                v = 0.5 * (v + self(x + dt * v, t + dt, c))
            x = x + dt * v
        return x
