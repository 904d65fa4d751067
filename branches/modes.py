"""Where a branch's data lives while it trains (``train.data``): a decision from the manifest alone, free of torch
(the launcher asks it to plan packs)."""

from __future__ import annotations

import numpy as np

from data_split.manifest import Manifest


def in_memory_bytes(manifest: Manifest, k: int) -> int:
    """Bytes of branch ``k``'s stored values (all splits, decompressed): what ``InMemorySplit`` holds."""
    per_row = int(np.prod(manifest.split.shape)) * np.dtype(manifest.split.dtype).itemsize
    return per_row * sum(int(e.rows) for e in manifest.branches[k].splits.values())


def choose_mode(mode: str, manifest: Manifest, k: int, memory_limit_mb: int) -> str:
    """``memory`` or ``stream`` for ``train.data`` = ``mode`` (``auto``: stream above the limit)."""
    if mode != "auto":
        return mode
    return "stream" if in_memory_bytes(manifest, k) > memory_limit_mb * 2**20 else "memory"
