"""The base LightningModule that owns and trains a bank of keyed generators: construction, subclass hooks,
checkpoint metadata."""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
from lightning.pytorch import LightningModule
from torch import nn

from a2vgen.modules.bank import ADAPTER_KEY
from a2vgen.modules.keyed import KeyedGenerators
from a2vgen.modules.registry import MODULES
from a2vgen.modules.stacked_steps import GroupInput, StackedSteps
from a2vgen.modules.stacking import StackedNetworks
from a2vgen.modules.steps import GeneratorSteps
from a2vgen.nn.adapter import AudioPromptAdapter
from a2vgen.nn.cvae import ConditionalVAE
from a2vgen.nn.loss import VAELossSchedule, calibrated_nll, gaussian_elbo_terms, vae_loss_terms
from a2vgen.seeding import key_seed

__all__ = ["ADAPTER_KEY", "BaseGeneratorModule", "CheckpointMismatchError", "key_seed"]

log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """A checkpoint was written by an incompatible configuration."""


class BaseGeneratorModule(KeyedGenerators, StackedSteps, GeneratorSteps, LightningModule):
    """Keyed conditional generators of audio embeddings, trained with one AdamW optimizer.

    This file holds the construction, the hooks a subclass overrides and the checkpoint metadata; the keys,
    banks and per-class buffers are in :class:`~a2vgen.modules.keyed.KeyedGenerators`, the training,
    evaluation and prediction steps in :class:`~a2vgen.modules.steps.GeneratorSteps`, and the stacked
    training of a visit's generators in :class:`~a2vgen.modules.stacked_steps.StackedSteps`.

    Subclasses choose the granularity by implementing :meth:`configure_keys` (class → key). A new
    generator type overrides :meth:`build_network` (the network of one key) and/or :meth:`compute_loss`
    (per-sample loss parts); nothing else needs to change. Every subclass is registered in
    :data:`~a2vgen.modules.registry.MODULES` when it is defined, so its checkpoints load.

    Args:
        classes: every class the federation may train, in label order (linked from the data).
        audio_shape: ``[L, D_a]`` of one audio-embedding sample.
        cond_shapes: per-sample shapes of the conditioning tensors, e.g. ``[[77, 768]]`` (SD) or
            ``[[512, 4096], [768]]`` (FLUX); ``[]`` trains unconditioned VAEs.
        class_cond: optional per-class conditioning tensors (``[C, *shape]`` each), kept as buffers so
            that :meth:`sample` works from a checkpoint alone.
        audio_stats: optional per-class training-audio statistics ``[count [C], mean [C, L, D],
            var [C, L, D]]`` (linked from the data). Each generator standardizes its audio with the
            statistics of the classes it serves, and its conditioning across the class set; buffers of
            the network, so they follow it through sharing, FedAvg, reset, checkpoints and exports.
        hidden_dim, latent_dim, cond_width: network sizes.
        noise_rank: rank of the calibrated sampling noise's covariance beyond its diagonal (``elbo``;
            generators of one class only, see :class:`~a2vgen.nn.cvae.ConditionalVAE`).
        lr, weight_decay: AdamW settings.
        input_noise: std of Gaussian noise added to the encoder input only (denoising VAE).
        grad_clip: gradient-norm clip, applied to each generator on its own.
        objective: ``"elbo"`` (default): a Gaussian-decoder ELBO with a calibrated per-element decoder
            variance, KL summed over latent dimensions with weight ``kl_weight``, on standardized audio;
            samples carry the decoder's residual noise. ``"original"``: the original system's
            ``MSE + β·KL + w·(1 − cos)`` on raw audio (no standardization, no sampling noise), which
            collapses to the class mean on small classes; kept to reproduce it.
        kl_weight: weight of the KL term of the ``elbo`` objective (after warm-up).
        min_noise_var: floor of the calibrated decoder variance, in standardized units.
        beta_max, beta_warmup_epochs, sim_weight_start, sim_weight_end, sim_decay_epochs: loss schedule
            (SPEC §2), following each generator's own age; ``beta_warmup_epochs`` also warms up the
            ``elbo`` objective's KL weight, the others apply to ``original`` only.
        seed: run seed; each key's initialisation derives from ``(seed, key)``.
        train_adapter: also train an audio→prompt adapter on the same batches (full mode; linked from
            ``trainer.generator_only`` by the CLI), mapping audio embeddings to the conditioning space.
        adapter_hidden_dim, adapter_rank: adapter sizes (see :class:`~a2vgen.nn.adapter.AudioPromptAdapter`).
        adapter_weight: weight of the adapter's MSE in the training loss.
    """

    granularity: str = "base"

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        MODULES.register(cls)

    def __init__(
        self,
        classes: list[str] | None = None,
        audio_shape: list[int] | None = None,
        cond_shapes: list[list[int]] | None = None,
        class_cond: list[torch.Tensor] | None = None,
        audio_stats: list[torch.Tensor] | None = None,
        hidden_dim: int = 256,
        latent_dim: int = 64,
        cond_width: int = 64,
        noise_rank: int = 8,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        input_noise: float = 0.1,
        grad_clip: float = 5.0,
        objective: Literal["elbo", "original"] = "elbo",
        kl_weight: float = 1.0,
        min_noise_var: float = 1e-3,
        beta_max: float = 0.01,
        beta_warmup_epochs: int = 5,
        sim_weight_start: float = 0.1,
        sim_weight_end: float = 0.01,
        sim_decay_epochs: int = 10,
        seed: int = 0,
        train_adapter: bool = False,
        adapter_hidden_dim: int = 512,
        adapter_rank: int = 16,
        adapter_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["class_cond", "audio_stats"])
        if objective not in ("elbo", "original"):
            raise ValueError(f"objective must be 'elbo' or 'original', got {objective!r}")
        if not classes:
            raise ValueError(f"{type(self).__name__} needs the list of classes (got {classes!r})")
        self.classes = list(classes)
        self.audio_shape = list(audio_shape or [4, 768])
        self.cond_shapes = [list(s) for s in (cond_shapes if cond_shapes is not None else [[77, 768]])]
        self.schedule = VAELossSchedule(
            beta_max, beta_warmup_epochs, sim_weight_start, sim_weight_end, sim_decay_epochs
        )
        self.class_to_key = self.configure_keys(self.classes)
        for key in set(self.class_to_key.values()):
            if "." in key or not key:
                raise ValueError(f"generator key {key!r} must be a non-empty name without '.'")
        self.generator_keys = list(dict.fromkeys(self.class_to_key[c] for c in self.classes))
        self._register_class_cond(class_cond)
        self._register_audio_stats(audio_stats)
        self.bank = self.build_bank(self.generator_keys)
        self._stepped_keys: list[str] = []
        self._epoch_keys: set[str] = set()
        self._visit_stats: dict[str, torch.Tensor] = {}
        self._stacks: dict[nn.Module, tuple[StackedNetworks, int]] = {}
        self._free_params: list[nn.Parameter] = []  # while stacking: see StackedSteps.backward
        self._ran_apart: list[nn.Module] = []

    # ------------------------------------------------------------------ hooks for subclasses
    def configure_keys(self, classes: list[str]) -> dict[str, str]:
        """Map every class to the key of the generator that trains it."""
        raise NotImplementedError

    def build_network(self, key: str) -> nn.Module:
        """The network of generator ``key`` (called under a seed derived from ``(seed, key)``).

        It must follow :class:`~a2vgen.nn.protocol.GeneratorNetwork`: ``sample(n, cond, generator=None,
        cond_index=None)`` and a JSON-able ``config`` that rebuilds it; how it trains is up to
        :meth:`compute_loss`. To export and load it, register its class with
        :func:`~a2vgen.nn.registry.register_generator`. A network with ``set_statistics(audio_mean,
        audio_std, class_cond)`` gets its key's audio statistics and the class conditioning right after
        it is built (buffers, so they travel with its weights).
        """
        hp = self.hparams
        served = [i for i, c in enumerate(self.classes) if self.class_to_key[c] == key]
        net = ConditionalVAE(
            self.audio_shape, self.cond_shapes, hp.hidden_dim, hp.latent_dim, hp.cond_width, hp.noise_rank, len(served)
        )
        if self.cond_shapes:  # sampling calibration per class: found from the class's prompt
            net.set_classes([t[served] for t in self.class_cond_tensors()])
        return net

    def build_adapter(self) -> nn.Module:
        """The audio→prompt adapter (called under a seed derived from ``(seed, "__adapter__")``)."""
        hp = self.hparams
        return AudioPromptAdapter(self.audio_shape, self.cond_shapes, hp.adapter_hidden_dim, hp.adapter_rank)

    def compute_loss(
        self,
        net: nn.Module,
        audio: torch.Tensor,
        cond: list[torch.Tensor],
        age: torch.Tensor,
        cond_index: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample loss parts ``[B]`` for one generator; ``loss`` is what is minimised, every part is
        logged (``train/<client>/<key>/<part>``, ``val/<key>/<part>``, ``test/<key>/<part>``).

        ``cond`` is per sample, or (with ``cond_index``) distinct rows picked per sample. Here: the network's
        forward on :meth:`draw_noise`'s random inputs, scored by :meth:`loss_parts`. A subclass that keeps
        this method and overrides those two keeps stacked training (see :meth:`stacking`); one that
        overrides it trains its generators one at a time.
        """
        outputs = net(audio, cond, cond_index=cond_index, **self.draw_noise(net, audio))
        return self.loss_parts(net, outputs, audio, cond, age, cond_index)

    def draw_noise(self, net: nn.Module, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        """The random inputs of one forward of ``net`` on ``audio``, as keyword arguments: drawn outside the
        network so that a stacked step, which runs the forward under ``vmap``, draws the same numbers as
        training apart. Here: the encoder's noised input (training only) and the VAE's ``eps``; a stack's are
        drawn by :meth:`draw_stacked_noise`, which must draw the same numbers (change the two together)."""
        hp = self.hparams
        noise = {}
        if self.training and hp.input_noise > 0:
            noise["encoder_input"] = audio + hp.input_noise * torch.randn_like(audio)
        noise["eps"] = torch.randn(audio.shape[0], net.latent_dim, device=audio.device)
        return noise

    def draw_stacked_noise(
        self, nets: list[nn.Module], audio: torch.Tensor, order: list[int]
    ) -> dict[str, torch.Tensor] | None:
        """:meth:`draw_noise` of ``K`` stacked networks at once (``audio``: theirs, ``[K, B, ...]``), drawn into
        the stacked tensors in ``order`` (network ``order[0]``'s first, ...): the numbers of drawing apart in that
        order, without a tensor per network to stack. ``None`` where :meth:`draw_noise` is a subclass's."""
        if type(self).draw_noise is not BaseGeneratorModule.draw_noise:
            return None
        hp = self.hparams
        noisy = self.training and hp.input_noise > 0
        encoder_input = torch.empty_like(audio) if noisy else None
        eps = torch.empty(*audio.shape[:2], nets[0].latent_dim, device=audio.device)  # torch.randn's dtype, as apart
        for k in order:
            if encoder_input is not None:
                encoder_input[k].normal_()
            eps[k].normal_()
        noise = {"eps": eps}
        if encoder_input is not None:  # audio + s * noise, rounded as apart
            noise = {"encoder_input": encoder_input.mul_(hp.input_noise).add_(audio), **noise}
        return noise

    def loss_parts(
        self,
        net: nn.Module,
        outputs: tuple,
        audio: torch.Tensor,
        cond: list[torch.Tensor],
        age: torch.Tensor,
        cond_index: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample loss parts from the network's ``outputs`` on ``audio`` (see :meth:`compute_loss`); also
        feeds the training batch to the network's latent fit and sampling calibration."""
        hp = self.hparams
        recon, mu, logvar, target, cond_mean = outputs
        if hp.objective == "original":
            parts = vae_loss_terms(recon, target, mu, logvar)
            parts["loss"] = (
                parts["mse"] + self.schedule.beta(age) * parts["kl"] + self.schedule.sim_weight(age) * parts["cos"]
            )
            return parts
        if self.training and audio.shape[0] > 1:
            net.track_latents(mu.detach(), logvar.detach())
            net.calibrate(target, cond, cond_index)
        return self.elbo_parts(outputs, age)

    def stacked_loss_parts(self, inputs: list[GroupInput], outputs: tuple) -> list[dict[str, torch.Tensor]] | None:
        """:meth:`loss_parts` of a stack's generators at once (``inputs``: each one's ``(slot, audio, cond,
        cond_index)``; ``outputs``: their stacked forward, every tensor ``[K, B, ...]``), as one batched
        computation instead of ``K``. ``None`` where the loss is not the base one (a subclass's own
        :meth:`loss_parts`, or the original objective): the caller then scores each generator apart."""
        if type(self).loss_parts is not BaseGeneratorModule.loss_parts or self.hparams.objective == "original":
            return None
        _, mu, logvar, target, _ = outputs
        if self.training and target.shape[1] > 1:
            for k, (slot, _, cond, cond_index) in enumerate(inputs):
                slot.net.track_latents(mu[k].detach(), logvar[k].detach())
                slot.net.calibrate(target[k], cond, cond_index)
        parts = self.elbo_parts(outputs, torch.stack([slot.age for slot, *_ in inputs]), sample_dim=1)
        return [dict(zip(parts, values)) for values in zip(*(part.unbind(0) for part in parts.values()))]

    def elbo_parts(self, outputs: tuple, age: torch.Tensor, sample_dim: int = 0) -> dict[str, torch.Tensor]:
        """The default objective's per-sample parts from a VAE's ``outputs`` (``sample_dim=1``: stacked
        generators' outputs ``[K, B, ...]`` and their ``age`` ``[K]``; parts ``[K, B]``)."""
        hp = self.hparams
        recon, mu, logvar, target, cond_mean = outputs
        parts, _ = gaussian_elbo_terms(recon, target, mu, logvar, hp.min_noise_var, sample_dim)
        # the class mean from the conditioning alone: a calibrated regression
        parts["mean_nll"], _ = calibrated_nll((cond_mean - target).pow(2), hp.min_noise_var, sample_dim)
        kl_weight = hp.kl_weight * (age.float() / max(hp.beta_warmup_epochs, 1)).clamp(max=1.0)
        if sample_dim:  # one weight per generator
            kl_weight = kl_weight[:, None]
        per_sample = math.prod(target.shape[sample_dim + 1 :])
        parts["loss"] = (parts["nll"] + kl_weight * parts["kl"] + parts["mean_nll"]) / per_sample
        return parts

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_metadata(self) -> dict:
        """What must match for a checkpoint to load into this module (plain types only)."""
        return {
            "class_path": f"{type(self).__module__}.{type(self).__qualname__}",
            "granularity": self.granularity,
            "keys": list(self.generator_keys),
            "classes": list(self.classes),
            "audio_shape": list(self.audio_shape),
            "cond_shapes": [list(s) for s in self.cond_shapes],
            "adapter": bool(self.hparams.train_adapter),
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["a2vgen"] = self.checkpoint_metadata()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("a2vgen")
        if saved is None:
            raise CheckpointMismatchError("checkpoint has no 'a2vgen' metadata: it was not written by a2vgen")
        mine = self.checkpoint_metadata()
        mine.pop("class_path")  # a subclass may load its parent's checkpoint
        diffs = [
            f"{k}: checkpoint has {saved.get(k)!r}, this module has {v!r}" for k, v in mine.items() if saved.get(k) != v
        ]
        if diffs:
            raise CheckpointMismatchError("checkpoint does not match this configuration; " + "; ".join(diffs))
        stored, expected = set(checkpoint.get("state_dict", {})), set(self.state_dict())
        if stored != expected:
            missing, unexpected = sorted(expected - stored), sorted(stored - expected)
            raise CheckpointMismatchError(
                f"checkpoint's generator state has other tensors than this module's (missing: {missing[:3]}, "
                f"unexpected: {unexpected[:3]}; {len(missing)} and {len(unexpected)} in all): it was written by "
                "another version of a2vgen or another network. Resume it with the version that wrote it, or start "
                "a new run"
            )
