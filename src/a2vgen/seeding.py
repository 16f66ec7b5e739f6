"""Seeds derived from a run seed and a name: generator keys, rounds, client visits, previews."""

from __future__ import annotations

import hashlib


def key_seed(seed: int, key: str) -> int:
    """A seed derived from the run seed and a generator key only (not from other keys or their order)."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
