"""Atomic file writes: the one place that writes a temporary file, syncs it and renames it into place."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, shared: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; once the block has written it, make it ``path`` atomically.

    The block writes the temporary file by any means (``torch.save``, ``safetensors``, ``write_text``). On
    success the file is flushed to disk (``fsync``), renamed over ``path`` and the rename is synced, so a
    crash or kill leaves either the old file or the complete new one, never a torn one. If the block
    raises, the temporary file is removed and ``path`` is untouched. ``shared``: other processes may write
    ``path`` at the same time (a cache), so the temporary name is hidden and carries the process id.
    """
    path = Path(path)
    tmp = temporary_path(path, shared)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    commit(tmp, path)


def temporary_path(path: Path, shared: bool = False) -> Path:
    """The temporary file beside ``path`` that :func:`commit` makes ``path`` (its folder is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp" if shared else f"{path.name}.tmp")


def commit(tmp: Path, path: Path) -> None:
    """Make the written file ``tmp`` ``path`` atomically: sync it, rename it over ``path``, sync the rename.
    On failure ``tmp`` is removed and ``path`` is untouched."""
    try:
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
