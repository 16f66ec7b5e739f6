"""A bank of keyed generators: the unit the federation shares, swaps, resets and averages."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

ADAPTER_KEY = "__adapter__"  # the audio→prompt adapter's name where generator keys are listed (stats, seeds)


class GeneratorSlot(nn.Module):
    """One generator network plus its training state.

    ``age`` counts the local epochs this generator trained since it was built or last reset (it drives
    the loss schedule); ``seen`` marks the classes whose samples it trained on since then, and ``wiped``
    the classes it had trained on before its resets (what they wiped). All are persistent buffers, so
    they travel with the weights in checkpoints and when banks are swapped.
    """

    def __init__(self, net: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("age", torch.zeros((), dtype=torch.long))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))
        self.register_buffer("wiped", torch.zeros(num_classes, dtype=torch.bool))

    def seen_classes(self, classes: Sequence[str], wiped: bool = False) -> list[str]:
        """The names in ``classes`` (the module's class list) of the classes this generator trained on
        since it was built or last reset (with ``wiped``: also before its resets)."""
        seen = self.seen | self.wiped if wiped else self.seen
        return [c for c, s in zip(classes, seen.tolist()) if s]


class GeneratorBank(nn.Module):
    """Generators for ``keys``, one :class:`GeneratorSlot` each, addressable by key name.

    ``slot_of_class[c]`` is the slot training class ``c`` (``-1``: no slot in this bank holds it).
    ``adapter`` is the audio→prompt adapter trained beside the generators in full mode (or ``None``); it
    lives in the bank so that it follows the sharing mode with them.
    """

    def __init__(
        self, keys: list[str], slots: list[GeneratorSlot], class_keys: list[str], adapter: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.adapter = adapter
        if len(keys) != len(slots):
            raise ValueError(f"{len(keys)} keys for {len(slots)} slots")
        self.keys = list(keys)
        self.slots = nn.ModuleList(slots)
        position = {k: i for i, k in enumerate(keys)}
        mapping = torch.tensor([position.get(k, -1) for k in class_keys], dtype=torch.long)
        self.register_buffer("slot_of_class", mapping, persistent=False)

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def __getitem__(self, key: str) -> GeneratorSlot:
        try:
            return self.slots[self.keys.index(key)]
        except ValueError:
            raise KeyError(f"no generator {key!r} in this bank; it holds {self.keys}") from None

    def items(self) -> Iterator[tuple[str, GeneratorSlot]]:
        return zip(self.keys, self.slots)
