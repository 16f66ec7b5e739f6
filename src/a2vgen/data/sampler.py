"""Batch samplers: key-grouped (one generator per batch) or mixed."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class KeyGroupedBatchSampler(Sampler[list[int]]):
    """Yield batches whose samples all train the same generator key.

    Within each key the samples are shuffled and cut into batches of ``batch_size`` (the last may be
    smaller); the batches of all keys are then shuffled together. With ``keys=None`` batches mix keys.
    The order depends only on ``seed`` and the epoch set by :meth:`set_epoch`.

    With ``stack_keys`` the same key batches come joined into rows, one batch per key: row ``t`` holds
    every key's ``t``-th batch, keys in the order their batch comes in the shuffled sequence. Each key
    then sees the very batches, in the same order, as without (for stacked training, see
    :meth:`~a2vgen.modules.stacked_steps.StackedSteps.stacking`).
    """

    def __init__(
        self, keys: torch.Tensor | None, num_samples: int, batch_size: int, seed: int = 0, stack_keys: bool = False
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.keys = keys
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.stack_keys = stack_keys
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _groups(self) -> list[torch.Tensor]:
        if self.keys is None:
            return [torch.arange(self.num_samples)]
        return [(self.keys == k).nonzero().flatten() for k in self.keys.unique()]

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        batches, owners = [], []
        for key, members in enumerate(self._groups()):
            shuffled = members[torch.randperm(len(members), generator=g)]
            parts = shuffled.split(self.batch_size)
            batches.extend(parts)
            owners.extend([key] * len(parts))
        order = torch.randperm(len(batches), generator=g).tolist()
        if not self.stack_keys:
            for i in order:
                yield batches[i].tolist()
            return
        rows: list[list[int]] = []
        taken: dict[int, int] = {}
        for i in order:
            t = taken.get(owners[i], 0)
            taken[owners[i]] = t + 1
            if t == len(rows):
                rows.append([])
            rows[t].append(i)
        for row in rows:
            yield torch.cat([batches[i] for i in row]).tolist()

    def __len__(self) -> int:
        sizes = [-(-len(m) // self.batch_size) for m in self._groups()]
        return max(sizes, default=0) if self.stack_keys else sum(sizes)
