"""How one sub-dataset file is laid out: its row order and its Parquet encoding.

Rows: a seeded random order of *blocks* of consecutive source images
(``row_order``). Whole-row shuffling would cost every branch ~2 bytes per row
for ``idx`` alone, repeated K times; runs of consecutive ``idx`` delta-encode to
almost nothing, and a random order of blocks is still class-mixed for a
stream of row groups (a branch's shuffle buffer mixes the blocks further).

Parquet: zstd; ``idx`` delta-coded; ``src`` and ``y`` dictionary-coded; ``x``
``fixed_size_binary`` rows, PLAIN (storage version 3; version 2 wrote Arrow's
fixed-shape tensor extension type, whose list decoding ran at ~4% of zstd's
speed: ``benchmarks/input_pipeline.py``); row groups of about ``ROW_GROUP_BYTES`` of stored values
(the unit a streaming branch reads and shuffles), so a small image gives long
row groups (fewer dictionaries and pages: 2% of the bytes for Fashion-MNIST
sub16) and a large one gives row groups that stay small in memory.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROW_BLOCK = 64  # at most this many consecutive source images stay together in a file's row order
MIN_BLOCKS = 64  # ... and a range has at least this many blocks (small ranges get shorter blocks)
ROW_GROUP_BYTES = 4 << 20  # stored bytes of x per Parquet row group
TENSOR_SHAPE_KEY = "shape"  # a tensor column's field metadata: its per-row shape, a JSON list ...
TENSOR_DTYPE_KEY = "dtype"  # ... and its numpy dtype name


def row_order(n: int, seed: list[int]) -> np.ndarray:
    """Positions ``0..n-1`` as a seeded random order of blocks of consecutive positions.

    A function of ``n`` and ``seed`` only, so a retried task writes the same file, and every branch keeps it:
    row i of branch k and of branch j is the same image.
    """
    block = max(1, min(ROW_BLOCK, n // MIN_BLOCKS))
    starts = np.arange(0, n, block)[np.random.default_rng(seed).permutation(-(-n // block))]
    order = (starts[:, None] + np.arange(block)).reshape(-1)
    return order[order < n]


def tensor_field(name: str, x: np.ndarray) -> tuple[pa.Field, pa.Array]:
    """``x`` (n, *shape) as a ``fixed_size_binary`` column: one row-major row of ``prod(shape) x itemsize`` bytes
    per value, ``shape`` and ``dtype`` in the field's metadata (storage version 3).

    Zero-copy both ways: the column's data buffer is ``x``'s bytes, and a reader's array is a view of it.
    """
    x = np.ascontiguousarray(x)
    width = int(np.prod(x.shape[1:])) * x.dtype.itemsize
    arr = pa.Array.from_buffers(pa.binary(width), len(x), [None, pa.py_buffer(x.reshape(-1).view(np.uint8))])
    meta = {TENSOR_SHAPE_KEY: json.dumps(list(x.shape[1:])), TENSOR_DTYPE_KEY: x.dtype.name}
    return pa.field(name, arr.type, metadata=meta), arr


def table_bytes(columns: dict[str, np.ndarray]) -> bytes:
    """One Parquet file of ``columns``; arrays of more than one dimension become tensor columns (``tensor_field``).

    A tensor column is stored PLAIN (no dictionary): its values are whole rows, and reading it back is then a
    zstd decompression and a copy.
    """
    fields, arrays = [], []
    for name, v in columns.items():
        field, arr = tensor_field(name, v) if v.ndim > 1 else (pa.field(name, pa.array(v).type), pa.array(v))
        fields.append(field)
        arrays.append(arr)
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    row_bytes = max((v[0].nbytes for v in columns.values() if v.ndim > 1 and len(v)), default=1)
    dictionary = [name for name, v in columns.items() if name != "idx" and v.ndim == 1]
    buf = io.BytesIO()
    pq.write_table(
        table,
        buf,
        compression="zstd",
        row_group_size=max(1, ROW_GROUP_BYTES // row_bytes),
        use_dictionary=dictionary,
        column_encoding={"idx": "DELTA_BINARY_PACKED"} if "idx" in columns else None,
    )
    return buf.getvalue()


def shard_bytes(idx: np.ndarray, src: np.ndarray, y: np.ndarray, x: np.ndarray) -> bytes:
    """One sub-dataset file: idx int64, src int16, y int64, x (C, h, w) of the stored dtype as ``fixed_size_binary``."""
    return table_bytes({"idx": idx.astype(np.int64), "src": src.astype(np.int16), "y": y.astype(np.int64), "x": x})


def raw_bytes(x: np.ndarray) -> int:
    """Bytes of raw uint8 images (n, C, H, W) as one zstd Parquet column: what the sub-datasets are compared to."""
    return len(table_bytes({"x": np.asarray(x, dtype=np.uint8)}))
