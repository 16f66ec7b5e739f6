"""The batch the data modules yield and the generator modules consume, with its conditioning read in one place.

Conditioning comes one of two ways: per sample (``cond`` tensors ``[B, *shape]``, no ``cond_index``), or per
class (``cond`` holds each class of the batch once, ``[K, *shape]``, and ``cond_index`` ``[B]`` picks a row per
sample: the batch stays small when many samples share a class). :func:`sample_cond` and :func:`subset_cond`
are the only code that tells the two apart.
"""

from __future__ import annotations

from typing import TypedDict

from torch import Tensor


class Batch(TypedDict, total=False):
    """One batch (a plain dict, so Lightning moves it between devices as usual)."""

    audio: Tensor  # [B, L, D_a] audio embeddings (absent in predict requests)
    cond: list[Tensor]  # per sample [B, *shape], or distinct rows [K, *shape] picked by cond_index
    cond_index: Tensor  # [B]: the row of every cond tensor that conditions each sample (per-class conditioning)
    class_idx: Tensor  # [B] class labels
    index: Tensor  # [B] positions in the embedding set (named in error messages)


def sample_cond(batch: Batch) -> list[Tensor]:
    """The conditioning of every sample, ``[B, *shape]`` per tensor, however the batch carries it."""
    index = batch.get("cond_index")
    return batch["cond"] if index is None else [c[index] for c in batch["cond"]]


def subset_cond(batch: Batch, mask: Tensor | slice | None) -> tuple[list[Tensor], Tensor | None]:
    """``(cond, cond_index)`` for the samples ``mask`` (a boolean mask or a slice) selects (``None``: all), in
    the batch's own form: per-class rows stay whole and only their index is selected."""
    cond, index = batch["cond"], batch.get("cond_index")
    if index is not None:
        return cond, (index if mask is None else index[mask])
    return (cond if mask is None else [t[mask] for t in cond]), None
