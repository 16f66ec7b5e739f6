"""Write what ``a2vgen predict`` generates: synthetic embeddings per class, in the a2vgen layout."""

from __future__ import annotations

import logging

import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from a2vgen.data.embeddings import EmbeddingSet, save_embeddings
from a2vgen.federation.view import output_path

log = logging.getLogger(__name__)


class SampleWriter(BasePredictionWriter):
    """Collect the predicted samples of every class into one safetensors file.

    Args:
        path: output file (default: ``<run dir>/samples.safetensors``); readable with
            :func:`a2vgen.data.embeddings.load_embeddings`.
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.path = path

    def write_on_epoch_end(self, trainer, module, predictions, batch_indices) -> None:
        batches = [b for group in predictions for b in (group if isinstance(group, list) else [group])]
        labels = torch.cat([b["class_idx"] for b in batches]).cpu()
        data = EmbeddingSet(
            audio=torch.cat([b["audio"] for b in batches]).float().cpu(),
            labels=labels,
            classes=list(module.classes),
            cond=[getattr(module, f"class_cond_{i}").cpu() for i in range(len(module.cond_shapes))],
            meta={"synthetic": "true", "granularity": module.granularity},
            origin="<predict>",
        )
        path = output_path(trainer, self.path, "samples.safetensors")
        save_embeddings(path, data)
        log.info("wrote %d synthetic samples of %d classes to %s", len(labels), len(labels.unique()), path)
