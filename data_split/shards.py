"""Reading a written split back: the manifest and one branch's shards.

This is what a branch does: it opens the manifest, then only the files the
manifest lists for its own branch, never another branch's.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_split.pipeline import MANIFEST, MANIFEST_VERSION
from data_split.storage import RunStorage

REQUIRED_MANIFEST_FIELDS = ("version", "config_hash", "source", "split", "val_fraction", "seed", "branches")


class ManifestError(ValueError):
    """``manifest.json`` is missing or lacks a field; the message names it."""


def load_manifest(storage: RunStorage) -> dict:
    if not storage.exists(MANIFEST):
        raise ManifestError(f"{storage.url(MANIFEST)} does not exist: run `spectral split` first (or the split is incomplete)")
    manifest = storage.read_json(MANIFEST)
    missing = [f for f in REQUIRED_MANIFEST_FIELDS if f not in manifest]
    if missing:
        raise ManifestError(f"{storage.url(MANIFEST)} lacks field(s) {', '.join(missing)}")
    if manifest["version"] != MANIFEST_VERSION:
        raise ManifestError(f"{storage.url(MANIFEST)} has version {manifest['version']}, this code reads {MANIFEST_VERSION}")
    return manifest


@dataclass(frozen=True)
class BranchData:
    """One split of one branch, rows in ascending ``idx`` order."""

    idx: np.ndarray  # (N,) int64
    y: np.ndarray  # (N,) int64
    x: np.ndarray  # (N, C, h, w) float32, pixels in [0, 1] through the transform; not normalised

    def __len__(self) -> int:
        return len(self.idx)


def _tensor_column(col: pa.ChunkedArray, shape: tuple[int, ...], where: str) -> np.ndarray:
    """A fixed-shape tensor column as (N, *shape) float32, whatever extension type wrote it."""
    arr = col.combine_chunks()
    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    values = arr.flatten().to_numpy(zero_copy_only=False)
    n = len(arr)
    if values.size != n * int(np.prod(shape)):
        raise ManifestError(f"{where}: column x holds {values.size} values for {n} rows, expected shape {shape} per row")
    return values.astype(np.float32, copy=False).reshape(n, *shape)


def read_branch(storage: RunStorage, manifest: dict, split: str, k: int) -> BranchData:
    """All rows of branch ``k`` in ``split``, read from the files the manifest lists."""
    try:
        entry = manifest["branches"][k]["splits"][split]
    except (IndexError, KeyError):
        raise ManifestError(f"{storage.url(MANIFEST)} has no branch {k} split {split!r}") from None
    shape = tuple(manifest["split"]["branch_shape"])
    parts = []
    for rel in entry["files"]:
        table = pq.read_table(io.BytesIO(storage.read_bytes(rel)))
        for name in ("idx", "y", "x"):
            if name not in table.column_names:
                raise ManifestError(f"{storage.url(rel)}: missing column {name!r}")
        parts.append(
            (
                table.column("idx").to_numpy().astype(np.int64),
                table.column("y").to_numpy().astype(np.int64),
                _tensor_column(table.column("x"), shape, storage.url(rel)),
            )
        )
    if not parts:
        return BranchData(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, *shape), np.float32))
    idx, y, x = (np.concatenate(p) for p in zip(*parts))
    if len(idx) != entry["rows"]:
        raise ManifestError(f"branch {k} split {split}: files hold {len(idx)} rows, the manifest says {entry['rows']}")
    order = np.argsort(idx, kind="stable")
    return BranchData(idx=idx[order], y=y[order], x=x[order])
