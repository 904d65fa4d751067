"""How one sub-dataset file is laid out: its row order and its Parquet encoding.

Rows: a seeded random order of *blocks* of consecutive source images
(``row_order``). Whole-row shuffling would cost every branch ~2 bytes per row
for ``idx`` alone, repeated K times; runs of consecutive ``idx`` delta-encode to
almost nothing, and a random order of blocks is still class-mixed for a
stream of row groups (a branch's shuffle buffer mixes the blocks further).

Parquet: zstd; ``idx`` delta-coded; ``src``, ``y`` and the codes of ``x``
dictionary-coded; row groups of about ``ROW_GROUP_BYTES`` of stored values
(the unit a streaming branch reads and shuffles), so a small image gives long
row groups (fewer dictionaries and pages: 2% of the bytes for Fashion-MNIST
sub16) and a large one gives row groups that stay small in memory.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROW_BLOCK = 64  # at most this many consecutive source images stay together in a file's row order
MIN_BLOCKS = 64  # ... and a range has at least this many blocks (small ranges get shorter blocks)
ROW_GROUP_BYTES = 4 << 20  # stored bytes of x per Parquet row group


def row_order(n: int, seed: list[int]) -> np.ndarray:
    """Positions ``0..n-1`` as a seeded random order of blocks of consecutive positions.

    A function of ``n`` and ``seed`` only, so a retried task writes the same file, and every branch keeps it:
    row i of branch k and of branch j is the same image.
    """
    block = max(1, min(ROW_BLOCK, n // MIN_BLOCKS))
    starts = np.arange(0, n, block)[np.random.default_rng(seed).permutation(-(-n // block))]
    order = (starts[:, None] + np.arange(block)).reshape(-1)
    return order[order < n]


def table_bytes(columns: dict[str, np.ndarray]) -> bytes:
    """One Parquet file of ``columns``; arrays of more than one dimension become fixed-shape tensor columns."""
    table = pa.table({
        name: pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(v)) if v.ndim > 1 else pa.array(v)
        for name, v in columns.items()
    })
    row_bytes = max((v[0].nbytes for v in columns.values() if v.ndim > 1 and len(v)), default=1)
    leaves = [f"{name}.list.element" if v.ndim > 1 else name for name, v in columns.items() if name != "idx"]
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=max(1, ROW_GROUP_BYTES // row_bytes),
                   use_dictionary=leaves,
                   column_encoding={"idx": "DELTA_BINARY_PACKED"} if "idx" in columns else None)
    return buf.getvalue()


def shard_bytes(idx: np.ndarray, src: np.ndarray, y: np.ndarray, x: np.ndarray) -> bytes:
    """One sub-dataset file: idx int64, src int16, y int64, x fixed-shape tensor (C, h, w) of the stored dtype."""
    return table_bytes({"idx": idx.astype(np.int64), "src": src.astype(np.int16), "y": y.astype(np.int64), "x": x})


def raw_bytes(x: np.ndarray) -> int:
    """Bytes of raw uint8 images (n, C, H, W) as one zstd Parquet column: what the sub-datasets are compared to."""
    return len(table_bytes({"x": np.asarray(x, dtype=np.uint8)}))
