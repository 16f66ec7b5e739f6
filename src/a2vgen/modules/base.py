"""The base LightningModule that owns and trains a bank of keyed generators."""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Iterable
from typing import Literal

import torch
from lightning.pytorch import LightningModule
from torch import nn

from a2vgen.modules.bank import GeneratorBank, GeneratorSlot
from a2vgen.modules.registry import MODULES
from a2vgen.nn.adapter import AudioPromptAdapter
from a2vgen.nn.calibration import low_rank_ema, within_group_factors
from a2vgen.nn.cvae import ConditionalVAE
from a2vgen.nn.loss import VAELossSchedule, gaussian_elbo_terms, vae_loss_terms
from a2vgen.nn.protocol import GeneratorNetwork

log = logging.getLogger(__name__)

ADAPTER_KEY = "__adapter__"


def key_seed(seed: int, key: str) -> int:
    """A seed derived from the run seed and a generator key only (not from other keys or their order)."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class CheckpointMismatchError(ValueError):
    """A checkpoint was written by an incompatible configuration."""


class BaseGeneratorModule(LightningModule):
    """Keyed conditional generators of audio embeddings, trained with one AdamW optimizer.

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
        pooled = list(self.class_to_key.values()).count(key) > 1  # see ConditionalVAE: calibration per class
        return ConditionalVAE(
            self.audio_shape, self.cond_shapes, hp.hidden_dim, hp.latent_dim, hp.cond_width, hp.noise_rank, pooled
        )

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

        ``cond`` is per sample, or (with ``cond_index``) distinct rows picked per sample.
        """
        hp = self.hparams
        noisy = None
        if self.training and hp.input_noise > 0:
            noisy = audio + hp.input_noise * torch.randn_like(audio)
        recon, mu, logvar, target, cond_mean = net(audio, cond, encoder_input=noisy, cond_index=cond_index)
        if hp.objective == "original":
            parts = vae_loss_terms(recon, target, mu, logvar)
            parts["loss"] = (
                parts["mse"] + self.schedule.beta(age) * parts["kl"] + self.schedule.sim_weight(age) * parts["cos"]
            )
            return parts
        parts, _ = gaussian_elbo_terms(recon, target, mu, logvar, hp.min_noise_var)
        sq = (cond_mean - target).pow(2)  # the class mean from the conditioning alone: a calibrated regression
        var = sq.detach().mean(0).clamp_min(hp.min_noise_var)
        parts["mean_nll"] = 0.5 * (sq / var + var.log()).flatten(1).sum(1)
        if self.training and audio.shape[0] > 1:
            net.track_latents(mu.detach(), logvar.detach())
            self._calibrate_sampling_noise(net, target, cond, cond_index)
        kl_weight = hp.kl_weight * (age.float() / max(hp.beta_warmup_epochs, 1)).clamp(max=1.0)
        parts["loss"] = (parts["nll"] + kl_weight * parts["kl"] + parts["mean_nll"]) / target[0].numel()
        return parts

    @torch.no_grad()
    def _calibrate_sampling_noise(
        self, net: nn.Module, target: torch.Tensor, cond: list[torch.Tensor], cond_index: torch.Tensor | None
    ) -> None:
        """Move ``net.mean_shift``, ``net.noise_var``, ``net.data_basis`` and ``net.decoded_basis`` (10 % a
        step) towards the batch's: the mean offset and the within-class covariance that decoding sampled
        latents does not reproduce (variance floored at ``min_noise_var``; see
        :mod:`a2vgen.nn.calibration`).

        Decoding latents drawn as :meth:`sample` draws them, with the batch's conditioning, shows how
        much spread the latent carries; the noise that :meth:`~a2vgen.nn.cvae.ConditionalVAE.sample`
        adds makes up the rest, so the samples' spread matches the data's even while the latent is still
        learning. Classes are told apart by ``cond_index`` (one group when conditioning is per sample).
        """
        groups = cond_index if cond_index is not None else torch.zeros(target.shape[0], dtype=torch.long)
        prior = net.decode(net.prior_latents(target.shape[0]), net.condition(cond, cond_index))
        data_var, data_factor = within_group_factors(target, groups)
        decoded_var, decoded_factor = within_group_factors(prior, groups)
        momentum = 0.1 if bool(net.noise_var.any()) else 1.0
        if not net.pooled:
            net.mean_shift.lerp_((target - prior).mean(0).to(net.mean_shift.dtype), momentum)
        gap = (data_var - decoded_var).clamp_min(self.hparams.min_noise_var)
        net.noise_var.lerp_(gap.to(net.noise_var.dtype), momentum)
        for basis, factor in ((net.data_basis, data_factor), (net.decoded_basis, decoded_factor)):
            if basis.shape[0]:
                basis.copy_(low_rank_ema(basis.flatten(1), factor, momentum).view_as(basis))

    # ------------------------------------------------------------------ keys and banks
    def generator_key(self, class_name: str) -> str:
        """The key of the generator that trains ``class_name``."""
        try:
            return self.class_to_key[class_name]
        except KeyError:
            raise KeyError(f"unknown class {class_name!r}; available classes: {self.classes}") from None

    def keys_for(self, classes: Iterable[str]) -> list[str]:
        """Keys of the generators training ``classes``, in the module's key order."""
        wanted = {self.generator_key(c) for c in classes}
        return [k for k in self.generator_keys if k in wanted]

    def build_slot(self, key: str) -> GeneratorSlot:
        """A freshly initialised generator for ``key``: same weights whenever it is built."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(key_seed(self.hparams.seed, key))
            net = self.build_network(key)
        if not isinstance(net, GeneratorNetwork):
            raise TypeError(
                f"{type(self).__name__}.build_network({key!r}) returned a {type(net).__name__} without `config` "
                "and `sample`: see a2vgen.nn.protocol.GeneratorNetwork"
            )
        if self.hparams.objective != "original" and hasattr(net, "set_statistics"):
            net.set_statistics(*self.key_statistics(key), self.class_cond_tensors())
        return GeneratorSlot(net, len(self.classes))

    def key_statistics(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std ``[L, D]`` of the training audio of the classes that ``key`` serves (pooled by
        sample count); ``(0, 1)`` when no statistics were given."""
        members = torch.tensor([self.class_to_key[c] == key for c in self.classes])
        count = self.audio_count * members
        if not bool(count.sum() > 0):
            return torch.zeros(self.audio_shape), torch.ones(self.audio_shape)
        w = (count / count.sum()).double().view(-1, 1, 1)
        mean = (w * self.audio_mean.double()).sum(0)
        var = (w * (self.audio_var.double() + (self.audio_mean.double() - mean).square())).sum(0)
        return mean.float(), var.sqrt().float()

    def build_bank(self, keys: list[str]) -> GeneratorBank:
        """A bank of fresh generators for ``keys`` (all of them for shared training, or a client's)."""
        unknown = [k for k in keys if k not in self.generator_keys]
        if unknown:
            raise KeyError(f"unknown generator keys {unknown}; this module has {self.generator_keys}")
        class_keys = [self.class_to_key[c] for c in self.classes]
        adapter = None
        if self.hparams.train_adapter:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(key_seed(self.hparams.seed, ADAPTER_KEY))
                adapter = self.build_adapter()
        return GeneratorBank(keys, [self.build_slot(k) for k in keys], class_keys, adapter)

    def build_banks(self, keys_per_owner: dict[str, list[str]]) -> dict[str, GeneratorBank]:
        """Fresh banks for many owners (independent clients), each holding its own copy of its keys.

        Every key is built once and deep-copied: the weights equal a build per owner (a key's seed
        depends on the key alone) without paying the random initialisation per owner.
        """
        needed = list(dict.fromkeys(k for keys in keys_per_owner.values() for k in keys))
        template = self.build_bank(needed)
        class_keys = [self.class_to_key[c] for c in self.classes]
        return {
            owner: GeneratorBank(
                keys, [copy.deepcopy(template[k]) for k in keys], class_keys, copy.deepcopy(template.adapter)
            )
            for owner, keys in keys_per_owner.items()
        }

    def adapt(self, audio: torch.Tensor) -> list[torch.Tensor]:
        """Prompt embeddings for audio embeddings ``[B, L, D_a]`` through the current bank's adapter."""
        if self.bank.adapter is None:
            raise RuntimeError("this module trains no adapter: set model.train_adapter (full mode)")
        return self.bank.adapter(audio)

    def seen_classes(self, key: str) -> list[str]:
        """Classes whose samples generator ``key`` trained on since it was built or last reset."""
        return self.bank[key].seen_classes(self.classes)

    def reset_generators(self, keys: Iterable[str]) -> list[str]:
        """Re-initialise ``keys`` exactly as at construction and drop their optimizer state.

        Weights come from the key's own seed, age and seen classes are cleared, and the Adam moments and
        step counts of these parameters are removed from every optimizer the Trainer steps, so their
        next step starts like a fresh optimizer's. Other keys are not touched.
        """
        keys = list(keys)
        for key in keys:
            slot = self.bank[key]
            fresh = self.build_slot(key).state_dict()
            with torch.no_grad():
                for name, tensor in slot.state_dict().items():
                    tensor.copy_(fresh[name])
            params = set(slot.parameters())
            for optimizer in self._trainer.optimizers if self._trainer is not None else []:
                for p in params:
                    optimizer.state.pop(p, None)
        return keys

    # ------------------------------------------------------------------ conditioning and statistics buffers
    def _register_audio_stats(self, audio_stats: list[torch.Tensor] | None) -> None:
        num, shape = len(self.classes), self.audio_shape
        if audio_stats is None:
            audio_stats = [torch.zeros(num), torch.zeros(num, *shape), torch.ones(num, *shape)]
        count, mean, var = (t.detach().float() for t in audio_stats)
        if list(count.shape) != [num] or list(mean.shape) != [num, *shape] or list(var.shape) != [num, *shape]:
            raise ValueError(
                f"audio_stats must be [count [{num}], mean {[num, *shape]}, var {[num, *shape]}], got "
                f"{[list(t.shape) for t in audio_stats]}"
            )
        self.register_buffer("audio_count", count)
        self.register_buffer("audio_mean", mean)
        self.register_buffer("audio_var", var)

    def class_cond_tensors(self) -> list[torch.Tensor]:
        """The stored conditioning of every class, ``[C, *shape]`` per conditioning tensor."""
        return [getattr(self, f"class_cond_{i}") for i in range(len(self.cond_shapes))]

    def _register_class_cond(self, class_cond: list[torch.Tensor] | None) -> None:
        num = len(self.classes)
        for i, shape in enumerate(self.cond_shapes):
            if class_cond is not None:
                tensor = class_cond[i].detach().float()
                if list(tensor.shape) != [num, *shape]:
                    raise ValueError(f"class_cond[{i}] has shape {list(tensor.shape)}, expected {[num, *shape]}")
            else:
                tensor = torch.zeros(num, *shape)
            self.register_buffer(f"class_cond_{i}", tensor)

    def class_condition(self, class_name: str) -> list[torch.Tensor]:
        """The stored conditioning of ``class_name``, each tensor with a leading batch axis of 1."""
        self.generator_key(class_name)  # raises, naming the available classes
        idx = self.classes.index(class_name)
        return [getattr(self, f"class_cond_{i}")[idx : idx + 1] for i in range(len(self.cond_shapes))]

    @torch.no_grad()
    def sample(
        self,
        class_name: str,
        n: int,
        cond: list[torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
        bank: GeneratorBank | None = None,
    ) -> torch.Tensor:
        """``n`` synthetic embeddings ``[n, L, D_a]`` of ``class_name`` (conditioning: stored or ``cond``) from
        ``bank`` (default: the module's own)."""
        net = (self.bank if bank is None else bank)[self.generator_key(class_name)].net
        if cond is None and self.cond_shapes:
            cond = self.class_condition(class_name)
        return net.sample(n, cond, generator=generator)

    # ------------------------------------------------------------------ training
    def _check_shapes(self, batch: dict) -> None:
        audio, cond = batch["audio"], batch["cond"]
        if list(audio.shape[1:]) != self.audio_shape:
            raise ValueError(f"audio embeddings have shape {list(audio.shape[1:])}, module expects {self.audio_shape}")
        if [list(c.shape[1:]) for c in cond] != self.cond_shapes:
            raise ValueError(
                f"conditioning shapes {[list(c.shape[1:]) for c in cond]} do not match the module's {self.cond_shapes}"
            )

    def _check_finite(self, batch: dict) -> None:
        """Name the first sample with NaN/Inf input (called when a loss is not finite: checking every
        batch would cost ~7% of a step, and data sources already validate what they load)."""
        audio, index = batch["audio"], batch.get("cond_index")
        cond = batch["cond"] if index is None else [c[index] for c in batch["cond"]]
        for name, tensor in [("audio", audio), *((f"cond.{i}", c) for i, c in enumerate(cond))]:
            finite = torch.isfinite(tensor.flatten(1)).all(dim=1)
            if not bool(finite.all()):
                bad = int((~finite).nonzero()[0])
                sample = int(batch["index"][bad]) if "index" in batch else bad
                raise ValueError(
                    f"NaN/Inf in '{name}' of sample {sample} (class '{self.classes[int(batch['class_idx'][bad])]}')"
                )

    def shared_step(self, batch: dict) -> tuple[torch.Tensor, dict[str, dict[str, torch.Tensor]]]:
        """Sum over keys of each key's mean loss, and per-key sums of the loss parts."""
        self._check_shapes(batch)
        audio, cond, class_idx, cond_index = batch["audio"], batch["cond"], batch["class_idx"], batch.get("cond_index")
        slot_idx = self.bank.slot_of_class[class_idx]
        if bool((slot_idx < 0).any()):
            missing = sorted({self.classes[int(c)] for c in class_idx[slot_idx < 0]})
            raise ValueError(f"classes {missing} have no generator in the current bank {self.bank.keys}")
        first = int(slot_idx[0])
        groups = (
            [(first, None)] if bool((slot_idx == first).all()) else [(int(s), slot_idx == s) for s in slot_idx.unique()]
        )
        total = audio.new_zeros(())
        stats: dict[str, dict[str, torch.Tensor]] = {}
        for s, mask in groups:
            slot = self.bank.slots[s]
            a = audio if mask is None else audio[mask]
            if cond_index is not None:  # distinct rows, picked per sample
                c, ci = cond, (cond_index if mask is None else cond_index[mask])
            else:
                c, ci = (cond if mask is None else [t[mask] for t in cond]), None
            key = self.bank.keys[s]
            parts = self.compute_loss(slot.net, a, c, slot.age, ci)
            if "loss" not in parts or "samples" in parts:
                raise KeyError(
                    f"{type(self).__name__}.compute_loss must return per-sample parts with 'loss' (and none named "
                    f"'samples'), got {sorted(parts)} for generator {key!r}"
                )
            total = total + parts["loss"].mean()
            stats[key] = {name: part.detach().sum() for name, part in parts.items()}
            stats[key]["samples"] = torch.tensor(float(a.shape[0]))
            if self.training:
                slot.seen[class_idx if mask is None else class_idx[mask]] = True
        if self.bank.adapter is not None:
            mse = sum(
                (p - t).pow(2).flatten(1).mean(dim=1)
                for p, t in zip(self.bank.adapter(audio), cond if cond_index is None else [t[cond_index] for t in cond])
            ) / len(cond)
            total = total + self.hparams.adapter_weight * mse.mean()
            stats[ADAPTER_KEY] = {"loss": mse.detach().sum(), "samples": torch.tensor(float(audio.shape[0]))}
        if not bool(torch.isfinite(total.detach())):
            self._check_finite(batch)
            raise FloatingPointError(f"non-finite loss {float(total)} on finite inputs: lower the learning rate?")
        return total, stats

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, stats = self.shared_step(batch)
        self._stepped_keys = list(stats)
        for key, values in stats.items():
            acc = self._visit_stats.setdefault(key, {})
            for name, value in values.items():
                value = value.to(loss.device)
                acc[name] = acc[name] + value if name in acc else value
        if (
            self._trainer is not None and self._trainer.progress_bar_callback is not None
        ):  # ~1 ms a step: only for a bar
            self.log("loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, logger=False)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self._epoch_keys.update(self._stepped_keys)

    def on_train_epoch_end(self) -> None:
        """Age every generator that trained in this local epoch (drives its loss schedule)."""
        for key in self._epoch_keys - {ADAPTER_KEY}:
            self.bank[key].age += 1
        self._epoch_keys.clear()

    def pop_visit_stats(self) -> dict[str, dict[str, float]]:
        """Mean of every loss part, and the sample count, per key since the last call (one client visit)."""
        out = {}
        for key, acc in self._visit_stats.items():
            values = dict(zip(acc, torch.stack(list(acc.values())).tolist()))
            n = max(values["samples"], 1.0)
            out[key] = {k: (v if k == "samples" else v / n) for k, v in values.items()}
        self._visit_stats = {}
        return out

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip each generator's gradient norm on its own, so keys sharing a batch do not interact."""
        clip = self.hparams.grad_clip
        if not clip:
            return
        for key in self._stepped_keys:
            module = self.bank.adapter if key == ADAPTER_KEY else self.bank[key]
            params = [p for p in module.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            # on CPU the comparison costs nothing and skips a pass over the gradients when within the limit
            if norm.device.type != "cpu" or norm > clip:
                torch.nn.utils.clip_grads_with_norm_(params, clip, norm)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.build_optimizer(self.bank)

    def build_optimizer(self, bank: GeneratorBank) -> torch.optim.Optimizer:
        """AdamW over ``bank`` (fused where the device supports it: ~2x faster on CPU)."""
        params = list(bank.parameters())
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, fused=fused)

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: dict, stage: str, dataloader_idx: int = 0) -> torch.Tensor:
        loss, stats = self.shared_step(batch)
        n = batch["audio"].shape[0]
        for key, values in stats.items():
            count = float(values.pop("samples"))
            for part, value in values.items():
                self.log(
                    f"{stage}/{key}/{part}",
                    value / count,
                    batch_size=int(count),
                    add_dataloader_idx=True,
                )
        self.log(f"{stage}/loss", loss, batch_size=n, prog_bar=True, add_dataloader_idx=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self._eval_step(batch, "val", dataloader_idx)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self._eval_step(batch, "test", dataloader_idx)

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        """Sample one batch of requests (``class_idx`` and ``cond`` per sample) from their generators."""
        class_idx, cond, cond_index = batch["class_idx"], batch["cond"], batch.get("cond_index")
        slot_idx = self.bank.slot_of_class[class_idx]
        audio = torch.empty(len(class_idx), *self.audio_shape, device=class_idx.device)
        for s in slot_idx.unique().tolist():
            mask = slot_idx == s
            net = self.bank.slots[s].net
            if cond_index is None:
                audio[mask] = net.sample(int(mask.sum()), [c[mask] for c in cond])
            else:
                audio[mask] = net.sample(int(mask.sum()), cond, cond_index=cond_index[mask])
        return {"audio": audio, "class_idx": class_idx}

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
