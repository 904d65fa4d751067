"""Reading a written split back: one branch's shards, from the files its manifest lists.

This is what a branch does: it opens the manifest, then only the files the
manifest lists for its own branch, never another branch's. Values come back
as stored (``split.dtype``); ``BranchData.values()`` or, on the device,
``data_split.quantize.decode`` turns them into float32.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_split.layout import MANIFEST
from data_split.manifest import Manifest, ManifestError
from data_split.parquet import TENSOR_DTYPE_KEY, TENSOR_SHAPE_KEY
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


def tensor_chunks(
    col: pa.ChunkedArray, field: pa.Field, shape: tuple[int, ...], dtype: str, where: str
) -> list[np.ndarray]:
    """A tensor column as one (n_i, *shape) array of ``dtype`` per chunk: views of Arrow's buffers where it can.

    Storage version 3 (``fixed_size_binary``, ``data_split.parquet.tensor_field``): a zero-copy, read-only view
    of each chunk's data buffer, checked against the field's ``shape``/``dtype`` metadata and the manifest's.
    Version 2 (Arrow's fixed-shape tensor extension type, a list array): flattened to numpy (a copy).
    """
    want = np.dtype(dtype)
    if pa.types.is_fixed_size_binary(field.type):
        meta = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
        stored = (json.loads(meta.get(TENSOR_SHAPE_KEY, "null")), meta.get(TENSOR_DTYPE_KEY))
        if stored != (list(shape), want.name):
            raise ManifestError(
                f"{where}: column x holds {stored[1]} {stored[0]} per row (field metadata), the manifest "
                f"says {want.name} {list(shape)}"
            )
        width = int(np.prod(shape)) * want.itemsize
        if field.type.byte_width != width:
            raise ManifestError(
                f"{where}: column x has {field.type.byte_width} bytes per row, {want.name} {list(shape)} needs {width}"
            )
        out = []
        for arr in col.chunks:
            if arr.null_count:
                raise ManifestError(f"{where}: column x has {arr.null_count} null row(s)")
            data = arr.buffers()[1]
            if not len(arr) or data is None:
                out.append(np.zeros((0, *shape), want))
                continue
            out.append(
                np.frombuffer(data, want, len(arr) * width // want.itemsize, arr.offset * width).reshape(
                    len(arr), *shape
                )
            )
        return out
    out = []
    for arr in col.chunks:
        if isinstance(arr, pa.ExtensionArray):
            arr = arr.storage
        values = arr.flatten().to_numpy(zero_copy_only=False)
        if values.size != len(arr) * int(np.prod(shape)):
            raise ManifestError(
                f"{where}: column x holds {values.size} values for {len(arr)} rows, expected shape {shape} per row"
            )
        if values.dtype != want:
            raise ManifestError(f"{where}: column x holds {values.dtype}, the manifest's split.dtype is {dtype}")
        out.append(values.reshape(len(arr), *shape))
    return out


def scatter(chunks: list[np.ndarray], order: np.ndarray, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """``np.concatenate(chunks)[order]`` with one copy instead of two: each chunk lands at its rows' places."""
    out = np.empty((len(order), *shape), dtype)
    where = np.empty_like(order)
    where[order] = np.arange(len(order))  # where[i]: the output row of input row i
    at = 0
    for c in chunks:
        out[where[at : at + len(c)]] = c
        at += len(c)
    return out


def read_branch(storage: RunStorage, manifest: Manifest, split: str, k: int) -> BranchData:
    """All rows of branch ``k`` in ``split``, read from the files the manifest lists.

    The labels first (a few bytes per row: they fix the row order), then ``x`` one row group at a time, each
    copied once to its rows' places while it is still in the cache (``scatter``).
    """
    try:
        entry = manifest.branches[k].splits[split]
    except (IndexError, KeyError):
        raise ManifestError(f"{storage.url(MANIFEST)} has no branch {k} split {split!r}") from None
    shape = manifest.split.shape
    dtype, offset, scale = branch_codec(manifest, k)
    files, labels = [], []
    for rel in entry.files:
        f = pq.ParquetFile(pa.BufferReader(storage.read_bytes(rel)))  # slices of the bytes, no copy
        labels.append(label_arrays(f.read(columns=["idx", "src", "y"]), storage.url(rel), f.schema_arrow.names))
        files.append((rel, f))
    if not labels:
        labels = [(np.zeros(0, np.int64), np.zeros(0, np.int16), np.zeros(0, np.int64))]
    idx, src, y = (np.concatenate(p) for p in zip(*labels))
    if len(idx) != entry.rows:
        raise ManifestError(f"branch {k} split {split}: files hold {len(idx)} rows, the manifest says {entry.rows}")
    order = np.lexsort((idx, src))  # by src, then idx
    x = np.empty((len(order), *shape), dtype)
    where = np.empty_like(order)
    where[order] = np.arange(len(order))  # where[i]: the output row of input row i
    at = 0
    for rel, f in files:
        for g in range(f.num_row_groups):
            t = f.read_row_group(g, columns=["x"])
            for c in tensor_chunks(t.column("x"), t.schema.field("x"), shape, dtype, storage.url(rel)):
                x[where[at : at + len(c)]] = c
                at += len(c)
    return BranchData(idx=idx[order], src=src[order], y=y[order], x=x, dtype=dtype, offset=offset, scale=scale)


def label_arrays(
    table: pa.Table, where: str, names: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(idx int64, src int16, y int64)`` of one file's table (or row group); every column checked present
    (in ``names``: the file's columns, where ``table`` holds only some)."""
    for name in ("idx", "src", "y", "x"):
        if name not in (table.column_names if names is None else names):
            raise ManifestError(f"{where}: missing column {name!r}")
    return (
        table.column("idx").to_numpy().astype(np.int64, copy=False),
        table.column("src").to_numpy().astype(np.int16, copy=False),
        table.column("y").to_numpy().astype(np.int64, copy=False),
    )


def table_arrays(table: pa.Table, shape: tuple[int, ...], dtype: str, where: str):
    """``(idx int64, src int16, y int64, x (n, *shape) stored dtype)`` of one file's table (or row group).

    ``x`` is a read-only view of the table's buffer when the table has one chunk (storage version 3).
    """
    idx, src, y = label_arrays(table, where)
    chunks = tensor_chunks(table.column("x"), table.schema.field("x"), shape, dtype, where)
    x = chunks[0] if len(chunks) == 1 else (np.concatenate(chunks) if chunks else np.zeros((0, *shape), dtype))
    return idx, src, y, x
