"""Reading sub-datasets back (``data_split.shards``): storage version 3 as zero-copy views, version 2 still read
the same, and a file that does not match its manifest refused with an error naming the file. No Ray."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import data_split.parquet as parquet
from branches._stream import StreamingSplit
from branches.data import InMemorySplit
from conftest import tiny_config
from data_split import RunStorage, load_manifest, make_source, read_branch
from data_split.layout import MANIFEST, READABLE_VERSIONS, write_manifest
from data_split.manifest import ManifestError
from data_split.parts import build_manifest
from data_split.pipeline import write_single_process
from data_split.shards import scatter, table_arrays

CPU = torch.device("cpu")


@pytest.fixture
def split(tmp_path, monkeypatch) -> RunStorage:
    monkeypatch.setattr(parquet, "ROW_GROUP_BYTES", 16 * 16)  # 16 rows of (1, 4, 4) codes: many row groups
    cfg = tiny_config(str(tmp_path / "unused"))
    storage = RunStorage(str(tmp_path / "run"))
    source = make_source(cfg.source)
    write_manifest(
        storage, build_manifest(source, cfg.source, cfg.split, write_single_process(source, cfg.split, storage))
    )
    return storage


def as_version_2(storage: RunStorage) -> None:
    """Rewrite every part file as storage version 2 wrote it (x as Arrow's fixed-shape tensor type, dictionary
    codes) and the manifest's version as 2."""
    m = load_manifest(storage)
    for b in m.branches:
        for entry in b.splits.values():
            for rel in entry.files:
                t = pq.read_table(io.BytesIO(storage.read_bytes(rel)))
                x = table_arrays(t, m.split.shape, m.split.dtype, rel)[3]
                old = t.set_column(3, "x", pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(x)))
                buf = io.BytesIO()
                pq.write_table(
                    old, buf, compression="zstd", row_group_size=16, use_dictionary=["src", "y", "x.list.element"]
                )
                storage.write_bytes(rel, buf.getvalue())
    obj = storage.read_json(MANIFEST)
    storage.write_json(MANIFEST, {**obj, "version": 2})


def epoch(stream: StreamingSplit) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in stream.train_batches(0, 1, 0, 32)]


def test_version_3_rows_are_zero_copy_views_of_arrow_buffers(split):
    m = load_manifest(split)
    assert m.version == 3
    rel = m.branches[0].splits["train"].files[0]
    table = pq.read_table(io.BytesIO(split.read_bytes(rel))).combine_chunks()
    x = table_arrays(table, m.split.shape, m.split.dtype, rel)[3]
    assert x.ctypes.data == table.column("x").chunks[0].buffers()[1].address  # a view, not a copy
    assert x.shape == (table.num_rows, *m.split.shape) and x.dtype == np.uint8


def test_version_2_runs_are_still_read_the_same(split, tmp_path):
    assert READABLE_VERSIONS == (2, 3)
    m3 = load_manifest(split)
    want = {s: read_branch(split, m3, s, 1) for s in ("train", "test")}
    stream3 = epoch(StreamingSplit(split, m3, "train", 1, CPU, shuffle_buffer=64))
    mem3 = [x.numpy() for x, _ in InMemorySplit(split, m3, "train", 1, CPU).train_batches(0, 1, 0, 32)]
    as_version_2(split)
    m2 = load_manifest(split)
    assert m2.version == 2
    rel = m2.branches[1].splits["train"].files[0]
    assert isinstance(pq.read_schema(io.BytesIO(split.read_bytes(rel))).field("x").type, pa.FixedShapeTensorType)
    for s, w in want.items():
        got = read_branch(split, m2, s, 1)
        for name in ("idx", "src", "y", "x"):
            np.testing.assert_array_equal(getattr(got, name), getattr(w, name))
    # the same batches, bit for bit: what a resumed v2 run replays is unchanged
    for (x2, y2), (x3, y3) in zip(
        epoch(StreamingSplit(split, m2, "train", 1, CPU, shuffle_buffer=64)), stream3, strict=True
    ):
        np.testing.assert_array_equal(x2, x3)
        np.testing.assert_array_equal(y2, y3)
    mem2 = [x.numpy() for x, _ in InMemorySplit(split, m2, "train", 1, CPU).train_batches(0, 1, 0, 32)]
    for a, b in zip(mem2, mem3, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "meta, match",
    [
        (
            {b"shape": b"[1, 2, 8]", b"dtype": b"uint8"},
            r"uint8 \[1, 2, 8\] per row \(field metadata\), the manifest says uint8 \[1, 4, 4\]",
        ),
        ({b"shape": b"[1, 4, 4]", b"dtype": b"float16"}, r"float16 \[1, 4, 4\] per row"),
        (None, r"None None per row"),
    ],
)
def test_a_file_not_matching_its_manifest_is_refused_naming_it(split, meta, match):
    m = load_manifest(split)
    rel = m.branches[0].splits["train"].files[0]
    t = pq.read_table(io.BytesIO(split.read_bytes(rel)))
    t = t.cast(t.schema.set(3, t.schema.field("x").with_metadata(meta)))
    with pytest.raises(ManifestError, match=rf"{rel}: column x holds {match}"):
        table_arrays(t, m.split.shape, m.split.dtype, rel)
    buf = io.BytesIO()
    pq.write_table(t, buf)
    split.write_bytes(rel, buf.getvalue())
    with pytest.raises(ManifestError, match=rel):
        read_branch(split, m, "train", 0)


def test_scatter_is_concatenate_then_take():
    rng = np.random.default_rng(0)
    chunks = [rng.integers(0, 255, (n, 2, 3), dtype=np.uint8) for n in (5, 0, 7, 1)]
    order = rng.permutation(13)
    np.testing.assert_array_equal(scatter(chunks, order, (2, 3), "uint8"), np.concatenate(chunks)[order])


def test_tensor_field_records_shape_and_dtype():
    x = np.arange(2 * 3 * 2, dtype=np.float16).reshape(2, 3, 2)
    field, arr = parquet.tensor_field("x", x)
    assert field.type == pa.binary(12) and json.loads(field.metadata[b"shape"]) == [3, 2]
    assert field.metadata[b"dtype"] == b"float16" and arr.to_pylist()[1] == x[1].tobytes()
