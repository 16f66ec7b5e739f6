"""One federated DataModule that builds a LightningDataModule per client (:mod:`a2vgen.data.client`)."""

from __future__ import annotations

import logging

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from a2vgen.batch import Batch
from a2vgen.data.client import BatchDataset, ClientDataModule
from a2vgen.data.clients import ClientSpec, demo_clients
from a2vgen.data.embeddings import EmbeddingSet
from a2vgen.data.sources import DemoEmbeddings, EmbeddingSource

__all__ = ["BatchDataset", "ClientDataModule", "FederatedDataModule", "SPLIT_NAMES", "demo_clients"]

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")


class FederatedDataModule(LightningDataModule):
    """Clients and their data.

    Args:
        clients: the federation's clients (default: the demo federation, with the demo data).
        source: where the embeddings come from (default: the built-in demo data).
        batch_size: samples per batch.
        key_grouped: batches hold one generator key each (one generator per optimizer step); set
            ``false`` for batches mixing keys.
        overlap: every client holding a class gets all its samples (default: a class's samples are split
            disjointly among the clients holding it).
        seed: seed of the partition.
        predict_samples: synthetic samples per class written by ``a2vgen predict``.
    """

    def __init__(
        self,
        clients: list[ClientSpec] | None = None,
        source: EmbeddingSource | None = None,
        batch_size: int = 64,
        key_grouped: bool = True,
        overlap: bool = False,
        seed: int = 0,
        predict_samples: int = 16,
    ) -> None:
        super().__init__()
        self.source = source or DemoEmbeddings()
        self.predict_samples = predict_samples
        self.specs = list(clients) if clients is not None else None
        self.batch_size = batch_size
        self.key_grouped = key_grouped
        self.overlap = overlap
        self.seed = seed
        self._data: EmbeddingSet | None = None
        self._audio_stats: list[torch.Tensor] | None = None
        self._clients: dict[str, ClientDataModule] | None = None

    # ------------------------------------------------------------------ data and its shape
    @property
    def data(self) -> EmbeddingSet:
        if self._data is None:
            data = self.source.load()
            if self.specs is None:
                if not isinstance(self.source, DemoEmbeddings):
                    raise ValueError("data.clients is empty: list the federation's clients (id and classes)")
                self.specs = demo_clients()
            self._validate_clients(data)
            self._data = self._restrict(data)
        return self._data

    def _validate_clients(self, data: EmbeddingSet) -> None:
        if not self.specs:
            raise ValueError("data.clients is empty: list the federation's clients (id and classes)")
        ids = [c.id for c in self.specs]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate client ids: {dupes}")
        for spec in self.specs:
            unknown = [c for c in spec.all_classes if c not in data.classes]
            if unknown:
                raise ValueError(
                    f"client {spec.id!r}: unknown classes {unknown} in {data.origin}; available classes: {data.classes}"
                )

    def _restrict(self, data: EmbeddingSet) -> EmbeddingSet:
        """Keep the classes some client holds, in the source's order, relabelled 0..C-1."""
        used = {c for spec in self.specs for c in spec.all_classes}
        classes = [c for c in data.classes if c in used]
        old = torch.tensor([data.classes.index(c) for c in classes], dtype=torch.long)
        remap = torch.full((len(data.classes),), -1, dtype=torch.long)
        remap[old] = torch.arange(len(classes))
        keep = (remap[data.labels] >= 0).nonzero().flatten()
        return EmbeddingSet(
            audio=data.audio[keep],
            labels=remap[data.labels[keep]],
            classes=classes,
            cond=[c[old] for c in data.cond],
            split=None if data.split is None else data.split[keep],
            sources=None if data.sources is None else [data.sources[i] for i in keep.tolist()],
            meta=data.meta,
            origin=data.origin,
        )

    @property
    def clients(self) -> list[ClientSpec]:
        _ = self.data
        return self.specs

    @property
    def classes(self) -> list[str]:
        return self.data.classes

    @property
    def audio_shape(self) -> list[int]:
        return list(self.data.audio_shape)

    @property
    def cond_shapes(self) -> list[list[int]]:
        return self.data.cond_shapes

    @property
    def class_cond(self) -> list[torch.Tensor]:
        return self.data.cond

    @property
    def audio_stats(self) -> list[torch.Tensor]:
        """Per-class statistics of the training audio: ``[count [C], mean [C, L, D], var [C, L, D]]``.

        The generators standardize their targets with them (see ``BaseGeneratorModule``). Computed once,
        in float64, over every client's training samples.
        """
        if self._audio_stats is None:
            data = self.data
            idx = data.split_indices("train")
            audio, labels = data.audio[idx].double(), data.labels[idx]
            count = torch.bincount(labels, minlength=len(data.classes)).double()
            total = torch.zeros(len(data.classes), *audio.shape[1:], dtype=torch.float64).index_add_(0, labels, audio)
            mean = total / count.clamp_min(1).view(-1, 1, 1)
            dev = (audio - mean[labels]).square()
            var = torch.zeros_like(mean).index_add_(0, labels, dev) / count.clamp_min(1).view(-1, 1, 1)
            self._audio_stats = [count.float(), mean.float(), var.float()]
        return self._audio_stats

    # ------------------------------------------------------------------ partitions
    def partition(self) -> dict[str, dict[str, torch.Tensor]]:
        """Sample indices per client and split: a class's samples are shuffled with the seed and split
        into equal, disjoint parts among the clients holding it (or shared whole with ``overlap``)."""
        data = self.data
        out = {spec.id: {s: [] for s in SPLIT_NAMES} for spec in self.specs}
        for c, name in enumerate(data.classes):
            holders = [spec.id for spec in self.specs if name in spec.all_classes]
            for split in SPLIT_NAMES:
                members = data.split_indices(split)
                members = members[data.labels[members] == c]
                g = torch.Generator().manual_seed(self.seed * 7919 + c * 31 + SPLIT_NAMES.index(split))
                members = members[torch.randperm(len(members), generator=g)]
                parts = [members] * len(holders) if self.overlap else members.tensor_split(len(holders))
                for holder, part in zip(holders, parts):
                    out[holder][split].append(part)
        return {
            cid: {s: torch.cat(p).sort().values if p else torch.empty(0, dtype=torch.long) for s, p in splits.items()}
            for cid, splits in out.items()
        }

    def client(self, client_id: str) -> ClientDataModule:
        """The DataModule of ``client_id`` (built on first use)."""
        if self._clients is None:
            parts = self.partition()
            self._clients = {
                spec.id: ClientDataModule(spec, self.data, parts[spec.id], self.batch_size) for spec in self.specs
            }
        return self._clients[client_id]

    def set_key_map(self, class_to_key: dict[str, str], keys: list[str]) -> None:
        """Group batches by generator key (``key_grouped``) using the module's class → key map."""
        for spec in self.clients:
            outside = [c for c in spec.all_classes if spec.group is not None and class_to_key[c] != spec.group]
            if outside:
                keys_of = sorted({class_to_key[c] for c in outside})
                raise ValueError(
                    f"client {spec.id!r} is pinned to group {spec.group!r}, but its classes {outside} "
                    f"train {keys_of}: fix class_groups or the client's classes"
                )
        key_of_class = None
        if self.key_grouped:
            key_of_class = torch.tensor([keys.index(class_to_key[c]) for c in self.classes], dtype=torch.long)
        for spec in self.clients:
            self.client(spec.id).key_of_class = key_of_class

    def setup(self, stage: str) -> None:
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is not None and hasattr(module, "class_to_key"):
            if list(module.classes) != self.classes:
                raise ValueError(f"the module's classes {module.classes} differ from the data's {self.classes}")
            self.set_key_map(module.class_to_key, module.generator_keys)

    # ------------------------------------------------------------------ evaluation loaders
    def _split_loaders(self, split: str) -> list[DataLoader]:
        loaders = []
        for spec in self.clients:
            client = self.client(spec.id)
            if client.num_samples(split) == 0:
                log.warning("client %r has no %s samples: skipped", spec.id, split)
                continue
            loaders.append(client.dataloader(split))
        return loaders

    def train_dataloader(self) -> DataLoader:
        raise RuntimeError("federated training draws its batches per client: fit with a2vgen's FederatedTrainer")

    def val_dataloader(self) -> list[DataLoader]:
        return self._split_loaders("val")

    def test_dataloader(self) -> list[DataLoader]:
        return self._split_loaders("test")

    def predict_dataloader(self) -> DataLoader:
        """Sampling requests: ``predict_samples`` per class, one batch per class, with its conditioning."""
        n = self.predict_samples
        requests = [
            Batch(
                class_idx=torch.full((n,), c, dtype=torch.long),
                cond=[t[c : c + 1] for t in self.class_cond],
                cond_index=torch.zeros(n, dtype=torch.long),
            )
            for c in range(len(self.classes))
        ]
        return DataLoader(requests, batch_size=None)
