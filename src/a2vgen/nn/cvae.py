"""Conditional VAE over audio-token embeddings ``[B, L, D]``; outputs are unbounded (no squashing)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from a2vgen.nn.conditioning import ConditionEncoder
from a2vgen.nn.registry import register_generator


class VAEOutput(NamedTuple):
    recon: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor


class ConditionedLinear(nn.Module):
    """``Linear(cat([x, c], -1))`` without building the concatenation.

    ``x`` and ``c`` get their own weight blocks, initialised exactly as one ``nn.Linear`` over the joined
    width (same values for the same seed). Keeping them apart lets autograd skip the input gradient of
    ``x`` when ``x`` needs none (the encoder's audio input), instead of computing it for the whole
    ``[B, x_dim + c_dim]`` concatenation and keeping only the ``c`` columns.
    """

    def __init__(self, in_dim: int, cond_dim: int, out_dim: int) -> None:
        super().__init__()
        joined = nn.Linear(in_dim + cond_dim, out_dim)
        self.weight = nn.Parameter(joined.weight.detach()[:, :in_dim].clone())
        self.bias = joined.bias
        self.cond_weight = nn.Parameter(joined.weight.detach()[:, in_dim:].clone()) if cond_dim else None

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.cond_weight is None:
            return out
        return torch.addmm(out, c, self.cond_weight.t())


class ConditionedMLP(nn.Module):
    """``[x, c]`` → hidden → hidden → out, with LayerNorm and SiLU between the linear layers."""

    def __init__(self, in_dim: int, cond_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.input = ConditionedLinear(in_dim, cond_dim, hidden_dim)
        self.body = nn.Sequential(
            nn.LayerNorm(hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.SiLU(),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        return self.body(self.input(x, c))


@register_generator(name="ConditionalVAE")
class ConditionalVAE(nn.Module):
    """``p(audio | cond)``: an MLP VAE over flattened tokens, conditioned per sample.

    ``cond_shapes`` lists the per-sample shapes of the conditioning tensors (see
    :class:`~a2vgen.nn.conditioning.ConditionEncoder`); an empty list gives an unconditioned VAE whose
    ``forward``/``sample`` ignore ``cond``.
    """

    def __init__(
        self,
        audio_shape: tuple[int, int] | list[int],
        cond_shapes: list[list[int]],
        hidden_dim: int = 1024,
        latent_dim: int = 256,
        cond_width: int = 128,
    ) -> None:
        super().__init__()
        self.config = {"audio_shape": list(audio_shape), "cond_shapes": [list(s) for s in cond_shapes],
                       "hidden_dim": hidden_dim, "latent_dim": latent_dim, "cond_width": cond_width}  # fmt: skip
        self.audio_shape = (int(audio_shape[0]), int(audio_shape[1]))
        self.latent_dim = latent_dim
        flat = self.audio_shape[0] * self.audio_shape[1]
        self.cond_encoder = ConditionEncoder(cond_shapes, cond_width) if cond_shapes else None
        c = cond_width if cond_shapes else 0
        self.encoder = ConditionedMLP(flat, c, hidden_dim, 2 * latent_dim)
        self.decoder = ConditionedMLP(latent_dim, c, hidden_dim, flat)

    @property
    def conditional(self) -> bool:
        return self.cond_encoder is not None

    def condition(self, cond: list[torch.Tensor] | None, cond_index: torch.Tensor | None = None) -> torch.Tensor | None:
        """Conditioning vectors per sample (``None`` for an unconditioned VAE).

        ``cond`` is per sample, or, with ``cond_index``, distinct rows (e.g. one per class) that are
        encoded once and picked per sample: far cheaper than encoding 64 copies of a ``[77, 768]`` text
        embedding.
        """
        if self.cond_encoder is None:
            return None
        if cond is None:
            raise ValueError("this VAE is conditional: pass the conditioning tensors")
        encoded = self.cond_encoder(cond)
        return encoded if cond_index is None else encoded[cond_index]

    def encode(self, x: torch.Tensor, c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``mu, logvar`` of ``x`` given conditioning vectors ``c`` (from :meth:`condition`)."""
        mu, logvar = self.encoder(x.flatten(1), c).chunk(2, dim=-1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """Audio tokens ``[B, L, D]`` for latents ``z`` given conditioning vectors ``c``."""
        return self.decoder(z, c).view(z.shape[0], *self.audio_shape)

    def forward(
        self,
        x: torch.Tensor,
        cond: list[torch.Tensor] | None = None,
        encoder_input: torch.Tensor | None = None,
        eps: torch.Tensor | None = None,
        cond_index: torch.Tensor | None = None,
    ) -> VAEOutput:
        """Reconstruct ``x``; ``encoder_input`` (e.g. a noised ``x``) replaces ``x`` for the encoder only."""
        c = self.condition(cond, cond_index)
        mu, logvar = self.encode(x if encoder_input is None else encoder_input, c)
        if eps is None:
            eps = torch.randn_like(mu)
        z = mu + eps * torch.exp(0.5 * logvar)
        return VAEOutput(self.decode(z, c), mu, logvar)

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
        z = torch.randn(n, self.latent_dim, generator=generator, device=device)
        if cond is not None and cond_index is None and cond[0].shape[0] == 1:
            cond_index = torch.zeros(n, dtype=torch.long, device=device)
        return self.decode(z, self.condition(cond, cond_index))
