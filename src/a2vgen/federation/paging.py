"""Optimizer state of the generators a visit does not train, kept on disk instead of in memory.

A per-class run of many classes holds two AdamW moments per parameter: at 309 default-size generators
4.7 GiB of the ~7.8 GiB it would need, though a visit steps only its client's generators. The
:class:`OptimizerPager` writes each generator's optimizer state to a file in the run folder when a visit
ends and leaves it in ``optimizer.state`` as read-only memory-mapped views of that file; a visit's start
swaps its generators' views for private in-memory copies. Values never change on the way (raw bytes out,
the same bytes back), so anything that reads the optimizer (``state_dict``, checkpoints, resets, the
Flower codec) sees exactly what it would see without paging; only where the bytes live differs.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from a2vgen.modules.bank import GeneratorBank, GeneratorSlot

PAGE_PREFIX = ".a2vgen-paged-"  # page files' names (matched in /proc/self/maps to release their pages)
AUTO_MIN_BYTES = 2**30  # paging="auto" pages when the bank's parameters exceed this (their moments: 2x)
_MADV_DONTNEED = 4


class OptimizerPager:
    """Pages the optimizer state of generators in and out of memory, one file per generator and page-out.

    Each file holds the raw bytes of one generator's state tensors (all float32: the moments and the step
    count), mapped read-only: a write to a paged tensor crashes the process instead of being silently lost
    (nothing writes one: the optimizer steps only parameters with gradients, and a visit pages its own
    generators in before its first step). A file is written in ``root`` (the run folder) and unlinked as
    soon as it is mapped, so its disk space comes back when its views are dropped (paged in, reset, or
    replaced by a restored checkpoint) and a killed run leaves nothing behind.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.pages: dict[GeneratorSlot, torch.Tensor] = {}
        self.count = 0

    def page_in(self, bank: GeneratorBank, keys: Iterable[str], optimizers: list[torch.optim.Optimizer]) -> None:
        """Give ``keys``' paged state private in-memory copies (before the visit that steps them)."""
        for key in keys:
            page = self.pages.pop(bank[key], None)
            if page is None:
                continue
            for state in _states(bank[key], optimizers):
                for name, value in state.items():
                    if isinstance(value, torch.Tensor) and _inside(value, page):
                        state[name] = value.clone()

    def page_out(
        self, bank: GeneratorBank, optimizers: list[torch.optim.Optimizer], release: list[tuple[int, int]] | None = None
    ) -> None:
        """Move every generator's in-memory state in ``bank`` to a file and map it back read-only.

        ``release``: address ranges (:func:`file_mappings`) of a just-restored checkpoint that holds the
        state unchanged: each generator's source pages there are dropped once written, so that paging a
        whole restored state out never holds all of it in memory."""
        for slot in bank.slots:
            states = _states(slot, optimizers)
            entries = [(s, n, v) for s in states for n, v in s.items() if isinstance(v, torch.Tensor)]
            page = self.pages.get(slot)
            if not entries:
                self.pages.pop(slot, None)  # reset since its page-out: nothing left to keep
                continue
            if page is not None and all(_inside(v, page) for _, _, v in entries):
                continue
            if any(v.dtype != torch.float32 or v.device.type != "cpu" for _, _, v in entries):
                continue  # not a CPU float32 AdamW state: left in memory
            self.count += 1
            self.root.mkdir(parents=True, exist_ok=True)
            path = self.root / f"{PAGE_PREFIX}{os.getpid()}-{self.count}.bin"
            with open(path, "wb") as f:
                for _, _, v in entries:
                    data = memoryview(v.detach().contiguous().numpy()).cast("B")
                    f.write(data)
                    if release:
                        release_paged_memory(data, release)
            mapped = _map_read_only(path, sum(v.numel() for _, _, v in entries))
            path.unlink()
            offset = 0
            for state, name, value in entries:
                state[name] = mapped[offset : offset + value.numel()].view(value.shape)
                offset += value.numel()
            self.pages[slot] = mapped


def wants_paging(setting: bool | str, bank: GeneratorBank) -> bool:
    """Whether ``setting`` (``True``, ``False`` or ``"auto"``) pages ``bank``'s optimizer state."""
    if setting == "auto":
        return sum(p.numel() * p.element_size() for p in bank.parameters()) > AUTO_MIN_BYTES
    return bool(setting)


def release_paged_memory(written: memoryview, maps: list[tuple[int, int]]) -> None:
    """Drop this process's pages of ``written`` where it lies in a mapping of ``maps`` (sorted, from
    :func:`page_mappings` or :func:`file_mappings`): the bytes stay in the file and are read again when
    needed. Only for bytes that equal the file's (a private mapping's changed pages would revert)."""
    start = _address(written)
    end = start + written.nbytes
    i = max(bisect.bisect_right(maps, (start, start)) - 1, 0)
    while i < len(maps) and maps[i][0] < end:
        lo, hi = max(maps[i][0], start), min(maps[i][1], end)
        first = (lo + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
        last = hi // mmap.PAGESIZE * mmap.PAGESIZE
        if last > first:
            _libc().madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED)
        i += 1


def page_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process's read-only mappings of page files, sorted (empty off Linux)."""
    try:
        with open("/proc/self/maps") as f:
            lines = f.readlines()
    except OSError:
        return []
    pattern = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) r--p .*/" + re.escape(PAGE_PREFIX))
    return sorted((int(m[1], 16), int(m[2], 16)) for m in map(pattern.match, lines) if m)


def file_mappings(path: str | Path) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of the file ``path`` (e.g. a checkpoint loaded with
    ``mmap``), sorted (empty off Linux)."""
    target = os.path.realpath(path)
    try:
        with open("/proc/self/maps") as f:
            lines = f.readlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        fields = line.rstrip("\n").split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target:
            start, end = fields[0].split("-")
            ranges.append((int(start, 16), int(end, 16)))
    return sorted(ranges)


def release_mappings(maps: list[tuple[int, int]]) -> None:
    """Drop this process's pages of the whole mappings ``maps`` (of a file whose mapped bytes nothing
    changed): what is used again is read again from the file."""
    for start, end in maps:
        _libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


def copy_out(optimizers: Iterable[torch.optim.Optimizer], maps: list[tuple[int, int]]) -> None:
    """Give every optimizer state tensor that lies in ``maps`` (a just-restored checkpoint's mappings, whose
    bytes nothing changed) a private in-memory copy, dropping the source's pages as it goes."""
    for optimizer in optimizers:
        for state in optimizer.state.values():
            for name, value in state.items():
                if isinstance(value, torch.Tensor) and value.device.type == "cpu" and _in_maps(value, maps):
                    state[name] = value.clone()
                    release_paged_memory(memoryview(value.detach().contiguous().numpy()).cast("B"), maps)


def _in_maps(tensor: torch.Tensor, maps: list[tuple[int, int]]) -> bool:
    address = tensor.data_ptr()
    return any(start <= address < end for start, end in maps)


def _states(slot: GeneratorSlot, optimizers: list[torch.optim.Optimizer]) -> list[dict]:
    return [opt.state[p] for p in slot.parameters() for opt in optimizers if p in opt.state]


def _inside(tensor: torch.Tensor, page: torch.Tensor) -> bool:
    start = page.data_ptr()
    return start <= tensor.data_ptr() < start + page.nbytes


def _map_read_only(path: Path, numel: int) -> torch.Tensor:
    with open(path, "rb") as f:
        buffer = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable buffer": intended, writes must fail
        return torch.frombuffer(buffer, dtype=torch.float32, count=numel)


def _address(view: memoryview) -> int:
    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data) if view.nbytes else 0


_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return _LIBC
