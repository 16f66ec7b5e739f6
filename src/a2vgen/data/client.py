"""One client's data: its partition of every split as a LightningDataModule, batched per generator key."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from a2vgen.batch import Batch
from a2vgen.data.clients import ClientSpec
from a2vgen.data.embeddings import EmbeddingSet
from a2vgen.data.sampler import KeyGroupedBatchSampler


class BatchDataset(Dataset):
    """Tensors of many samples; indexing with a list of indices returns a whole batch at once."""

    def __init__(self, audio: torch.Tensor, labels: torch.Tensor, cond: list[torch.Tensor], index: torch.Tensor):
        self.audio, self.labels, self.cond, self.index = audio, labels, cond, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, rows: list[int]) -> Batch:
        """A batch; conditioning is per class, so ``cond`` holds each class of the batch once and
        ``cond_index`` picks a row per sample."""
        idx = self.index[rows]
        labels = self.labels[idx]
        classes, cond_index = labels.unique(return_inverse=True)
        return Batch(  # index_select: a third of the time of indexing with a tensor, for these copies
            audio=self.audio.index_select(0, idx),
            cond=[c.index_select(0, classes) for c in self.cond],
            cond_index=cond_index,
            class_idx=labels,
            index=idx,
        )


class ClientDataModule(LightningDataModule):
    """The data of one client: its partition of every split, restricted per round to its active classes."""

    def __init__(self, spec: ClientSpec, data: EmbeddingSet, indices: dict[str, torch.Tensor], batch_size: int):
        super().__init__()
        self.spec = spec
        self.data = data
        self.indices = indices
        self.batch_size = batch_size
        self.key_of_class: torch.Tensor | None = None
        self.seed = 0

    def num_samples(self, split: str = "train", classes: list[str] | None = None) -> int:
        return len(self._select(split, classes))

    def _select(self, split: str, classes: list[str] | None) -> torch.Tensor:
        idx = self.indices[split]
        if classes is None:
            return idx
        wanted = torch.tensor([self.data.classes.index(c) for c in classes], dtype=torch.long)
        return idx[torch.isin(self.data.labels[idx], wanted)]

    def dataloader(
        self, split: str = "train", classes: list[str] | None = None, seed: int = 0, stack_keys: bool = False
    ) -> DataLoader:
        """Batches of ``split`` for ``classes`` (default: all the client's); key-grouped when a key map is set,
        with ``stack_keys`` one batch per key joined into each (see :class:`KeyGroupedBatchSampler`)."""
        idx = self._select(split, classes)
        dataset = BatchDataset(self.data.audio, self.data.labels, self.data.cond, idx)
        keys = None if self.key_of_class is None else self.key_of_class[self.data.labels[idx]]
        sampler = KeyGroupedBatchSampler(keys, len(idx), self.batch_size, seed=seed, stack_keys=stack_keys)
        # its own generator: creating an iterator must not draw from the global RNG (exact resume)
        return DataLoader(dataset, sampler=sampler, batch_size=None, generator=torch.Generator().manual_seed(seed))

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train", self.spec.all_classes, self.seed)

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")
