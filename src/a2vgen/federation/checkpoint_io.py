"""Checkpoint files written straight to disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from a2vgen.io import atomic_path


class LocalCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that streams local checkpoints into the file with ``torch.save``.

    Lightning's default serializes the whole checkpoint into memory first and then copies it out (for a
    117 MB checkpoint of the default generator: ~450 ms vs ~100 ms here). The file is written through
    :func:`a2vgen.io.atomic_path`, so a failed or killed save never leaves a torn checkpoint at ``path``.
    Remote paths (``s3://`` and the like) go through Lightning's own writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
