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
    """

    def __init__(self, keys: torch.Tensor | None, num_samples: int, batch_size: int, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.keys = keys
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _groups(self) -> list[torch.Tensor]:
        if self.keys is None:
            return [torch.arange(self.num_samples)]
        return [(self.keys == k).nonzero().flatten() for k in self.keys.unique()]

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        batches = []
        for members in self._groups():
            shuffled = members[torch.randperm(len(members), generator=g)]
            batches.extend(shuffled.split(self.batch_size))
        for i in torch.randperm(len(batches), generator=g).tolist():
            yield batches[i].tolist()

    def __len__(self) -> int:
        return sum(-(-len(m) // self.batch_size) for m in self._groups())
