"""Keys, banks and the per-class buffers they are built from: the generator-bank half of
:class:`~a2vgen.modules.base.BaseGeneratorModule`."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch

from a2vgen.lightning_adapter import attached_trainer
from a2vgen.modules.bank import ADAPTER_KEY, GeneratorBank, GeneratorSlot
from a2vgen.nn.protocol import GeneratorNetwork
from a2vgen.seeding import key_seed


class KeyedGenerators:
    """Class → key lookups, building and resetting generator banks, class conditioning and audio statistics.

    A mixin of :class:`~a2vgen.modules.base.BaseGeneratorModule`, whose ``__init__`` sets ``classes``,
    ``class_to_key``, ``generator_keys``, ``audio_shape``, ``cond_shapes`` and ``bank``.
    """

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

    def seen_classes(self, key: str, wiped: bool = False) -> list[str]:
        """Classes whose samples generator ``key`` trained on since it was built or last reset (with
        ``wiped``: also before its resets)."""
        return self.bank[key].seen_classes(self.classes, wiped)

    def reset_generators(self, keys: Iterable[str]) -> list[str]:
        """Re-initialise ``keys`` exactly as at construction and drop their optimizer state.

        Weights come from the key's own seed, age and seen classes are cleared, and the Adam moments and
        step counts of these parameters are removed from every optimizer the Trainer steps, so their
        next step starts like a fresh optimizer's. Other keys are not touched.
        """
        keys = list(keys)
        trainer = attached_trainer(self)
        optimizers = trainer.optimizers if trainer is not None else []
        for key in keys:
            slot = self.bank[key]
            fresh = self.build_slot(key).state_dict()
            wiped = slot.seen | slot.wiped
            with torch.no_grad():
                for name, tensor in slot.state_dict().items():
                    tensor.copy_(fresh[name])
                slot.wiped.copy_(wiped)
            params = set(slot.parameters())
            for optimizer in optimizers:
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
