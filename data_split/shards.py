"""Reading a written split back: one branch's shards, from the files its manifest lists.

This is what a branch does: it opens the manifest, then only the files the
manifest lists for its own branch, never another branch's. Values come back
as stored (``split.dtype``); ``BranchData.values()`` or, on the device,
``data_split.quantize.decode`` turns them into float32.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_split.layout import MANIFEST
from data_split.manifest import Manifest, ManifestError
from data_split.quantize import branch_codec, decode
from data_split.storage import RunStorage


@dataclass(frozen=True)
class BranchData:
    """One split of one branch, rows in ascending ``(src, idx)`` order."""

    idx: np.ndarray  # (N,) int64
    src: np.ndarray  # (N,) int16
    y: np.ndarray  # (N,) int64
    x: np.ndarray  # (N, C, h, w) as stored: uint8 codes, float16 or float32 (pixels in [0, 1] through the transform)
    dtype: str  # the manifest's split.dtype
    offset: np.ndarray | None = None  # (C,) float32, uint8 only
    scale: np.ndarray | None = None  # (C,) float32, uint8 only

    def __len__(self) -> int:
        return len(self.idx)

    def values(self) -> np.ndarray:
        """``x`` decoded to float32 (N, C, h, w); not normalised."""
        return decode(self.x, self.dtype, self.offset, self.scale)


def _tensor_column(col: pa.ChunkedArray, shape: tuple[int, ...], where: str) -> np.ndarray:
    """A fixed-shape tensor column as (N, *shape) in its stored dtype, whatever extension type wrote it."""
    arr = col.combine_chunks()
    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    values = arr.flatten().to_numpy(zero_copy_only=False)
    n = len(arr)
    if values.size != n * int(np.prod(shape)):
        raise ManifestError(f"{where}: column x holds {values.size} values for {n} rows, expected shape {shape} per row")
    return values.reshape(n, *shape)


def read_branch(storage: RunStorage, manifest: Manifest, split: str, k: int) -> BranchData:
    """All rows of branch ``k`` in ``split``, read from the files the manifest lists."""
    try:
        entry = manifest.branches[k].splits[split]
    except (IndexError, KeyError):
        raise ManifestError(f"{storage.url(MANIFEST)} has no branch {k} split {split!r}") from None
    shape = manifest.split.shape
    dtype, offset, scale = branch_codec(manifest, k)
    parts = []
    for rel in entry.files:
        parts.append(table_arrays(pq.read_table(io.BytesIO(storage.read_bytes(rel))), shape, dtype, storage.url(rel)))
    if not parts:
        parts = [(np.zeros(0, np.int64), np.zeros(0, np.int16), np.zeros(0, np.int64), np.zeros((0, *shape), dtype))]
    idx, src, y, x = (np.concatenate(p) for p in zip(*parts))
    if len(idx) != entry.rows:
        raise ManifestError(f"branch {k} split {split}: files hold {len(idx)} rows, the manifest says {entry.rows}")
    order = np.lexsort((idx, src))  # by src, then idx
    return BranchData(idx=idx[order], src=src[order], y=y[order], x=x[order], dtype=dtype, offset=offset, scale=scale)


def table_arrays(table: pa.Table, shape: tuple[int, ...], dtype: str, where: str):
    """``(idx int64, src int16, y int64, x (n, *shape) stored dtype)`` of one file's table (or row group)."""
    for name in ("idx", "src", "y", "x"):
        if name not in table.column_names:
            raise ManifestError(f"{where}: missing column {name!r}")
    x = _tensor_column(table.column("x"), shape, where)
    if x.dtype != np.dtype(dtype):
        raise ManifestError(f"{where}: column x holds {x.dtype}, the manifest's split.dtype is {dtype}")
    return (table.column("idx").to_numpy().astype(np.int64), table.column("src").to_numpy().astype(np.int16),
            table.column("y").to_numpy().astype(np.int64), x)
