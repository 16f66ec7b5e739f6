"""The a2vgen embedding layout: audio-token embeddings per sample, text conditioning per class.

One safetensors file holds one data set:

=============  ======================  ==============================================================
tensor         shape / dtype           meaning
=============  ======================  ==============================================================
``audio``      ``[N, L, D_a]`` float   audio-token embeddings of each sample (e.g. AST pooled to L)
``label``      ``[N]`` int64           index of each sample's class into the ``classes`` metadata
``split``      ``[N]`` int8            optional: 0 train, 1 val, 2 test (absent: all train)
``cond.0``     ``[C, S, D_c]`` float   per-class text embedding (SD: CLIP states; FLUX: T5 states)
``cond.1``     ``[C, D_p]`` float      optional second conditioning (FLUX: pooled CLIP)
=============  ======================  ==============================================================

String metadata: ``format`` (``a2vgen-embeddings/1``), ``classes`` (JSON list of class names, in label
order), optional ``sources`` (JSON list of one source name per sample, e.g. the wav file) and any
extra ``meta.*`` keys a producer wants to keep (encoder ids, pooling, ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

from a2vgen.io import atomic_path

FORMAT = "a2vgen-embeddings/1"
SPLITS = {"train": 0, "val": 1, "test": 2}


class EmbeddingFileError(ValueError):
    """An embedding file (or an in-memory set) is malformed; the message names file and sample."""


@dataclass
class EmbeddingSet:
    """Audio embeddings of ``N`` samples of ``C`` classes plus one conditioning entry per class."""

    audio: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    cond: list[torch.Tensor]
    split: torch.Tensor | None = None
    sources: list[str] | None = None
    meta: dict[str, str] = field(default_factory=dict)
    origin: str = "<memory>"

    def __post_init__(self) -> None:
        self.validate()

    @property
    def audio_shape(self) -> tuple[int, int]:
        return (int(self.audio.shape[1]), int(self.audio.shape[2]))

    @property
    def cond_shapes(self) -> list[list[int]]:
        return [list(c.shape[1:]) for c in self.cond]

    def sample_name(self, index: int) -> str:
        if self.sources is not None:
            return f"sample {index} ({self.sources[index]})"
        return f"sample {index}"

    def validate(self) -> None:
        """Check shapes, label range and finiteness; errors name the file and the first bad sample."""
        where = self.origin
        if self.audio.ndim != 3:
            raise EmbeddingFileError(f"{where}: 'audio' must be [N, L, D], got shape {list(self.audio.shape)}")
        n = self.audio.shape[0]
        if self.labels.shape != (n,):
            raise EmbeddingFileError(f"{where}: 'label' must be [{n}], got shape {list(self.labels.shape)}")
        if len(set(self.classes)) != len(self.classes):
            raise EmbeddingFileError(f"{where}: duplicate class names in {self.classes}")
        if n and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            bad = int(((self.labels < 0) | (self.labels >= len(self.classes))).nonzero()[0])
            raise EmbeddingFileError(
                f"{where}: {self.sample_name(bad)} has label {int(self.labels[bad])}, "
                f"outside the {len(self.classes)} classes"
            )
        if not self.cond:
            raise EmbeddingFileError(f"{where}: no conditioning tensors ('cond.0') found")
        for i, c in enumerate(self.cond):
            if c.shape[0] != len(self.classes):
                raise EmbeddingFileError(f"{where}: 'cond.{i}' has {c.shape[0]} rows for {len(self.classes)} classes")
            finite = torch.isfinite(c.reshape(c.shape[0], -1)).all(dim=1)
            if not bool(finite.all()):
                bad = int((~finite).nonzero()[0])
                raise EmbeddingFileError(f"{where}: 'cond.{i}' of class '{self.classes[bad]}' has NaN/Inf")
        finite = torch.isfinite(self.audio.reshape(n, -1)).all(dim=1)
        if not bool(finite.all()):
            bad = int((~finite).nonzero()[0])
            raise EmbeddingFileError(f"{where}: 'audio' of {self.sample_name(bad)} has NaN/Inf")
        if self.split is not None and self.split.shape != (n,):
            raise EmbeddingFileError(f"{where}: 'split' must be [{n}], got {list(self.split.shape)}")
        if self.sources is not None and len(self.sources) != n:
            raise EmbeddingFileError(f"{where}: {len(self.sources)} sources for {n} samples")

    def split_indices(self, split: str) -> torch.Tensor:
        """Indices of the samples in ``split`` ('train', 'val' or 'test')."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        if self.split is None:
            return torch.arange(len(self.labels)) if split == "train" else torch.empty(0, dtype=torch.long)
        return (self.split == SPLITS[split]).nonzero().flatten()


def save_embeddings(path: str | Path, data: EmbeddingSet) -> None:
    """Write ``data`` atomically (temp file, then rename) in the layout above."""
    path = Path(path)
    tensors = {"audio": data.audio.contiguous(), "label": data.labels.to(torch.int64).contiguous()}
    tensors.update({f"cond.{i}": c.contiguous() for i, c in enumerate(data.cond)})
    if data.split is not None:
        tensors["split"] = data.split.to(torch.int8).contiguous()
    metadata = {"format": FORMAT, "classes": json.dumps(data.classes)}
    if data.sources is not None:
        metadata["sources"] = json.dumps(data.sources)
    metadata.update({f"meta.{k}": str(v) for k, v in data.meta.items()})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_embeddings(path: str | Path) -> EmbeddingSet:
    """Read and validate an embedding file; errors name the file, the key and the sample."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embedding file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises several types for corrupt headers
        raise EmbeddingFileError(f"{path}: not a readable safetensors file ({err})") from err
    if metadata.get("format") != FORMAT:
        raise EmbeddingFileError(f"{path}: metadata 'format' is {metadata.get('format')!r}, expected {FORMAT!r}")
    for key in ("audio", "label", "cond.0"):
        if key not in tensors:
            raise EmbeddingFileError(f"{path}: missing tensor {key!r}")
    if "classes" not in metadata:
        raise EmbeddingFileError(f"{path}: missing metadata 'classes'")
    cond = []
    while f"cond.{len(cond)}" in tensors:
        cond.append(tensors[f"cond.{len(cond)}"].float())
    sources = json.loads(metadata["sources"]) if "sources" in metadata else None
    meta = {k[len("meta.") :]: v for k, v in metadata.items() if k.startswith("meta.")}
    return EmbeddingSet(
        audio=tensors["audio"].float(),
        labels=tensors["label"].long(),
        classes=list(json.loads(metadata["classes"])),
        cond=cond,
        split=tensors.get("split"),
        sources=sources,
        meta=meta,
        origin=str(path),
    )
