"""Conditional VAE over audio-token embeddings ``[B, L, D]``; outputs are unbounded (no squashing)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from a2vgen.nn import stacked
from a2vgen.nn.calibration import SamplingCalibration, fingerprint_width
from a2vgen.nn.conditioning import ConditionEncoder
from a2vgen.nn.registry import register_generator
from a2vgen.nn.standardize import Standardizer

LOGVAR_RANGE = (-30.0, 20.0)  # the encoder's log-variances are clamped to it


def latents(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    """The reparameterized latents ``mu + eps * std`` (``eps``: standard normal noise, drawn when not given)."""
    if eps is None:
        eps = torch.randn_like(mu)
    return mu + eps * torch.exp(0.5 * logvar)


class VAEOutput(NamedTuple):
    """``recon`` and ``target`` are in the standardized space (see :class:`ConditionalVAE`)."""

    recon: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    target: torch.Tensor
    cond_mean: torch.Tensor


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

    The VAE works on standardized audio (``audio_norm``, per element; identity until
    :meth:`set_statistics`). Two more parts make its samples follow the data rather than the prior's
    idea of it, both updated by :meth:`calibrate` during training and neutral otherwise:

    - ``latent_mean`` / ``latent_var``: a diagonal Gaussian fitted to the aggregate posterior (the
      encoder's codes of training data). With few samples the codes do not fill ``N(0, I)``, and
      decoding prior draws over- or under-shoots the data's spread; :meth:`sample` draws from the fit.
    - ``calibration`` (:class:`~a2vgen.nn.calibration.SamplingCalibration`), one row per class served
      (``num_classes``): the class's mean, per-element variance and top ``noise_rank`` within-class
      directions. :meth:`sample` compares them with :meth:`reference_draws` of the current decoder,
      moves the samples to the class mean and adds the covariance the decoder does not reproduce as
      noise, so samples carry the class's spread along the directions the data spreads in, even while
      the latent is still learning or after FedAvg has replaced the decoder. A generator of several
      classes finds a sample's row from its conditioning (:meth:`set_classes`); other prompts get
      diagonal noise from the variance pooled over its classes.

    A linear ``mean_head`` maps the conditioning vector to the class mean; the decoder adds the
    latent's part to it, and the encoder sees the audio minus that mean. The latent then codes how a
    clip differs from its class, not which class it is (which the conditioning already says), so a
    generator of many classes cannot ignore its conditioning and mix classes when it samples.
    """

    def __init__(
        self,
        audio_shape: tuple[int, int] | list[int],
        cond_shapes: list[list[int]],
        hidden_dim: int = 1024,
        latent_dim: int = 256,
        cond_width: int = 128,
        noise_rank: int = 8,
        num_classes: int = 1,
    ) -> None:
        super().__init__()
        self.config = {"audio_shape": list(audio_shape), "cond_shapes": [list(s) for s in cond_shapes],
                       "hidden_dim": hidden_dim, "latent_dim": latent_dim, "cond_width": cond_width,
                       "noise_rank": noise_rank, "num_classes": num_classes}  # fmt: skip
        self.audio_shape = (int(audio_shape[0]), int(audio_shape[1]))
        self.latent_dim = latent_dim
        flat = self.audio_shape[0] * self.audio_shape[1]
        self.cond_encoder = ConditionEncoder(cond_shapes, cond_width) if cond_shapes else None
        self.audio_norm = Standardizer(self.audio_shape)
        self.calibration = SamplingCalibration(
            self.audio_shape, num_classes, noise_rank, fingerprint_width(cond_shapes)
        )
        self.register_buffer("latent_mean", torch.zeros(latent_dim))
        self.register_buffer("latent_var", torch.ones(latent_dim))
        c = cond_width if cond_shapes else 0
        self.encoder = ConditionedMLP(flat, c, hidden_dim, 2 * latent_dim)
        self.decoder = ConditionedMLP(latent_dim, c, hidden_dim, flat)
        self.mean_head = nn.Linear(c, flat) if c else None
        if self.mean_head is not None:
            nn.init.zeros_(self.mean_head.weight)
            nn.init.zeros_(self.mean_head.bias)

    @property
    def conditional(self) -> bool:
        return self.cond_encoder is not None

    def set_statistics(
        self, audio_mean: torch.Tensor, audio_std: torch.Tensor, class_cond: list[torch.Tensor] | None = None
    ) -> None:
        """Standardize audio with ``audio_mean``/``audio_std`` (``[L, D]``) and the conditioning with the
        statistics of ``class_cond`` (per-class rows ``[C, *shape]``)."""
        self.audio_norm.set_statistics(audio_mean, audio_std)
        if self.cond_encoder is not None and class_cond is not None:
            self.cond_encoder.set_statistics(class_cond)

    def set_classes(self, class_cond: list[torch.Tensor]) -> None:
        """The stored conditioning rows ``[num_classes, *shape]`` of the classes this VAE serves, in
        calibration-row order."""
        self.calibration.set_classes(class_cond)

    def calibration_rows(
        self, cond: list[torch.Tensor] | None, n: int, cond_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The calibration row ``[n]`` of each of ``n`` samples (``-1``: a prompt of none of the classes)."""
        rows = self.calibration.rows(cond)
        if cond_index is not None:
            return rows[cond_index]
        return rows.expand(n) if rows.shape[0] == 1 else rows

    @torch.no_grad()
    def calibrate(
        self, target: torch.Tensor, cond: list[torch.Tensor] | None, cond_index: torch.Tensor | None = None
    ) -> None:
        """Pool a training batch (``target``: standardized audio) into its classes' sampling calibration."""
        self.calibration.update(self.calibration_rows(cond, target.shape[0], cond_index), target)

    def reference_draws(self, c: torch.Tensor | None, n: int = 256) -> torch.Tensor:
        """``n`` decoder draws ``[n, L, D]`` for one conditioning vector ``c`` (``[1, cond_width]``) from
        fixed latents: what the decoder reproduces of that class, the same whatever the caller's seed."""
        z = self.prior_latents(n, torch.Generator(device=self.latent_mean.device).manual_seed(0))
        return self.decode(z, None if c is None else c.expand(n, -1))

    def prior_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` latents from the fitted aggregate posterior (``N(0, I)`` until it is fitted)."""
        z = torch.randn(n, self.latent_dim, generator=generator, device=self.latent_mean.device)
        return self.latent_mean + z * self.latent_var.sqrt()

    @torch.no_grad()
    def track_latents(self, mu: torch.Tensor, logvar: torch.Tensor, momentum: float = 0.1) -> None:
        """Move the aggregate-posterior fit ``momentum`` of the way towards a batch's codes."""
        mu, logvar = mu.to(self.latent_mean.dtype), logvar.to(self.latent_var.dtype)
        self.latent_mean.lerp_(mu.mean(0), momentum)
        self.latent_var.lerp_(mu.var(0, unbiased=False) + logvar.exp().mean(0), momentum)

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
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def cond_mean(self, c: torch.Tensor | None, n: int) -> torch.Tensor:
        """The standardized class mean ``[n, L, D]`` predicted from conditioning vectors ``c`` (0 without)."""
        if self.mean_head is None:
            return self.latent_mean.new_zeros(n, *self.audio_shape)
        return self.mean_head(c).view(n, *self.audio_shape)

    def decode(self, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """Standardized audio tokens ``[B, L, D]`` (the decoder's mean) for latents ``z`` given ``c``."""
        return self.cond_mean(c, z.shape[0]) + self.decoder(z, c).view(z.shape[0], *self.audio_shape)

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
        target = self.audio_norm(x)
        mean = self.cond_mean(c, x.shape[0])
        seen = target if encoder_input is None else self.audio_norm(encoder_input)
        mu, logvar = self.encode(seen - mean.detach(), c)
        return VAEOutput(self.decode(latents(mu, logvar, eps), c), mu, logvar, target, mean)

    def stacked_forward(
        self,
        params: dict[str, torch.Tensor],
        buffers: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        cond: list[torch.Tensor] | None = None,
        encoder_input: torch.Tensor | None = None,
        eps: torch.Tensor | None = None,
        cond_index: torch.Tensor | None = None,
    ) -> VAEOutput:
        """:meth:`forward` of ``K`` networks of this one's structure at once, with batched matrix products
        (see :mod:`a2vgen.nn.stacked`): ``params`` and ``buffers`` by name, ``[K, ...]`` each (this network's
        own tensors are not used), and every input and output with a leading ``K`` axis."""
        k, n = x.shape[:2]
        c = None
        if self.cond_encoder is not None:
            if cond is None:
                raise ValueError("this VAE is conditional: pass the conditioning tensors")
            c = stacked.condition_encoder(cond, self.cond_encoder.cond_shapes, params, buffers, "cond_encoder")
            if cond_index is not None:
                c = torch.gather(c, 1, cond_index.unsqueeze(-1).expand(-1, -1, c.shape[-1]))
        target = stacked.standardize(x, buffers, "audio_norm")
        flat = target.flatten(2)
        mean = flat.new_zeros(flat.shape) if self.mean_head is None else stacked.linear(c, params, "mean_head")
        seen = flat if encoder_input is None else stacked.standardize(encoder_input, buffers, "audio_norm").flatten(2)
        mu, logvar = stacked.conditioned_mlp(seen - mean.detach(), c, params, "encoder").chunk(2, dim=-1)
        logvar = logvar.clamp(*LOGVAR_RANGE)
        recon = mean + stacked.conditioned_mlp(latents(mu, logvar, eps), c, params, "decoder")
        shape = (k, n, *self.audio_shape)
        return VAEOutput(recon.view(shape), mu, logvar, target, mean.view(shape))

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
        z = self.prior_latents(n, generator)
        if cond is not None and cond_index is None and cond[0].shape[0] == 1:
            cond_index = torch.zeros(n, dtype=torch.long, device=device)
        c = self.condition(cond, cond_index)
        out = self.decode(z, c)
        if self.calibration.calibrated:
            rows = self.calibration_rows(cond, n, cond_index)

            def reference(row: int) -> torch.Tensor:
                first = int((rows == row).nonzero()[0])
                return self.reference_draws(None if c is None else c[first : first + 1])

            out = self.calibration.correct(rows, out, reference, generator)
        return self.audio_norm.inverse(out)
