"""data_split.pipeline end to end on a real local Ray (``ray_session``): layout, columns, values, manifest, idempotence.

One tiny synthetic split is written once per module (``written``) and inspected by many tests; tests that
change a run write their own. The S3 test writes through a real S3 endpoint on loopback (moto's server).
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import tiny_config
from data_split import (
    ManifestError,
    RunStorage,
    SourceConfig,
    SourceError,
    SplitConfig,
    SplitConflictError,
    load_manifest,
    make_source,
    read_branch,
    spectral_components,
    split_dataset,
)
from data_split.parquet import MIN_BLOCKS, ROW_BLOCK, row_order
from data_split.parts import SPLITS, build_manifest, config_hash, val_mask
from data_split.pipeline import MANIFEST, write_single_process
from data_split.transforms import polyphase_split, transform_matrix
from fixtures_formats import write_imagefolder
from orchestrator.config import ConfigError, load_config

PART_RE = re.compile(r"^data/(train|val|test)/branch=(\d+)/[^/.][^/]*\.parquet$")


def _files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


def _read_pa(path: Path) -> dict:
    """One part file with plain pyarrow: idx, src, y and x (the stored codes) as numpy, in file order."""
    t = pq.read_table(path)
    return {
        "idx": t.column("idx").to_numpy(),
        "src": t.column("src").to_numpy(),
        "y": t.column("y").to_numpy(),
        "x": _x_codes(t),
    }


def _x_codes(t: pa.Table) -> np.ndarray:
    """docs/storage.md's recipe: x is fixed_size_binary, its shape and dtype in the field's metadata."""
    meta = t.schema.field("x").metadata
    shape, dtype = json.loads(meta[b"shape"]), np.dtype(meta[b"dtype"].decode())
    return np.frombuffer(b"".join(t.column("x").to_pylist()), dtype).reshape(t.num_rows, *shape)


def _read_split_pa(run: Path, split: str, k: int) -> dict:
    """Branch k of split, rows by idx; ``v``: the values decoded by docs/storage.md's formula offset + scale * q."""
    parts = [_read_pa(p) for p in sorted((run / "data" / split / f"branch={k}").glob("*.parquet"))]
    out = {name: np.concatenate([p[name] for p in parts]) for name in ("idx", "src", "y", "x")}
    order = np.argsort(out["idx"])
    out = {name: v[order] for name, v in out.items()}
    br = json.loads((run / MANIFEST).read_text())["branches"][k]
    off, scale = (np.asarray(br[f], np.float32).reshape(-1, 1, 1) for f in ("offset", "scale"))
    out["v"] = off + scale * out["x"].astype(np.float32)  # float32, as training decodes
    out["tol"] = float(np.max(scale)) / 2 + 1e-6  # round-to-nearest codes: at most half a step away
    return out


@pytest.fixture(scope="module")
def written(ray_session, tmp_path_factory):
    """A written tiny split (8x8 synthetic, 400 train / 100 test, 2x2 dct): (cfg, storage, result, run path)."""
    run = tmp_path_factory.mktemp("pipeline") / "run"
    cfg = tiny_config(str(run))
    storage = RunStorage(cfg.storage.uri)
    counted.clear()
    result = split_dataset(
        cfg.source, cfg.split, storage, on_progress=lambda done, total: counted.append((done, total))
    )
    return cfg, storage, result, run


counted: list[tuple[int, int]] = []  # the ``written`` split's progress calls


def test_progress_counts_every_image_once_as_tasks_finish(written):
    cfg, _, result, _ = written
    total = sum(result.manifest.source.counts.values())  # 400 train + 100 test
    tasks = -(-400 // cfg.split.images_per_task) + -(-100 // cfg.split.images_per_task)
    assert len(counted) == tasks and {t for _, t in counted} == {total}
    done = [d for d, _ in counted]
    assert done == sorted(done) and done[-1] == total and len(set(done)) == tasks


# -- layout and columns -------------------------------------------------------------------------------
def test_layout(written):
    cfg, _, result, run = written
    assert not result.up_to_date
    files = _files(run)
    assert "data/manifest.json" in files
    parts = [f for f in files if f != "data/manifest.json"]
    assert parts and all(PART_RE.match(f) for f in parts), [f for f in parts if not PART_RE.match(f)]
    seen = {(m[1], int(m[2])) for m in map(PART_RE.match, parts)}
    assert seen == {(s, k) for s in SPLITS for k in range(cfg.split.k)}
    assert not [f for f in files if "/." in f or f.startswith(".")]  # no temporaries or probes left


def test_parquet_columns_with_pyarrow(written):
    cfg, _, _, run = written
    for path in sorted((run / "data").rglob("*.parquet")):
        t = pq.read_table(path)
        assert t.column_names == ["idx", "src", "y", "x"]
        assert t.schema.field("idx").type == pa.int64()
        assert t.schema.field("src").type == pa.int16()
        assert not t.column("src").to_numpy().any()  # 0: the main source
        assert t.schema.field("y").type == pa.int64()
        x_field = t.schema.field("x")
        assert x_field.type == pa.binary(16)  # fixed_size_binary of 1 x 4 x 4 uint8 codes (split.dtype's default)
        assert x_field.metadata == {b"shape": b"[1, 4, 4]", b"dtype": b"uint8"}
        x = _x_codes(t)
        assert x.dtype == np.uint8 and x.shape == (t.num_rows, 1, 4, 4)
        meta = pq.read_metadata(path)
        assert {meta.row_group(0).column(i).compression for i in range(meta.num_columns)} == {"ZSTD"}


@pytest.mark.parametrize("n", [1, 63, 150, 4096, 10_000, 10_001])
def test_row_order_is_a_seeded_permutation_of_blocks_of_consecutive_images(n):
    order = row_order(n, [0, 1, 2])
    np.testing.assert_array_equal(np.sort(order), np.arange(n))  # every image once
    np.testing.assert_array_equal(order, row_order(n, [0, 1, 2]))  # seeded
    block = max(1, min(ROW_BLOCK, n // MIN_BLOCKS))
    runs = np.split(order, np.flatnonzero(np.diff(order) != 1) + 1)  # maximal runs of consecutive images
    for run in runs:  # are whole blocks (two neighbours may follow each other; the last block may be short)
        assert run[0] % block == 0 and (len(run) % block == 0 or run[-1] == n - 1), (block, run)
    if n > block:
        assert not (np.diff(order) > 0).all()  # in a random order of blocks
        assert not np.array_equal(order, row_order(n, [0, 1, 3]))


def test_rows_are_in_a_seeded_random_order_shared_by_every_branch(written):
    cfg, _, _, run = written
    for split in SPLITS:
        for part in sorted((run / "data" / split / "branch=0").glob("*.parquet")):
            idx0 = _read_pa(part)["idx"]
            assert len(idx0) > 2 and not (np.diff(idx0) > 0).all(), part  # not in source order
            for k in range(1, cfg.split.k):  # row i is the same image in every branch
                np.testing.assert_array_equal(_read_pa(run / "data" / split / f"branch={k}" / part.name)["idx"], idx0)
    # (The same seed writes the same order: test_single_process_reference_writes_the_same compares the files.)


def test_float16_split_stores_the_values(ray_session, tmp_path):
    cfg = tiny_config(str(tmp_path / "run"), **{"split.dtype": "float16", "source.limit": 40})
    storage = RunStorage(cfg.storage.uri)
    m = split_dataset(cfg.source, cfg.split, storage).manifest
    assert m.split.dtype == "float16" and m.branches[0].scale is None and "scale" not in m.to_json()["branches"][0]
    x, _ = make_source(cfg.source).read("test", 0, 40)
    want = spectral_components(x.astype(np.float32) / 255, 2, 2, "dct")  # (N, K, C, h, w)
    for k in range(4):
        bd = read_branch(storage, m, "test", k)
        assert bd.x.dtype == np.float16 and bd.values().dtype == np.float32
        np.testing.assert_allclose(bd.values(), want[bd.idx, k], rtol=2**-11, atol=2**-24)  # half precision


def test_version_1_manifest_says_how_to_resplit(tmp_path):
    storage = RunStorage(str(tmp_path / "old"))
    storage.write_json(
        MANIFEST,
        {"version": 1, "config_hash": "x", "source": {}, "split": {}, "val_fraction": 0.1, "seed": 0, "branches": []},
    )
    with pytest.raises(ManifestError, match=r"storage version 1 .*spectral split .*--overwrite"):
        load_manifest(storage)


def test_parquet_readable_by_ray_data(written):
    import ray
    from ray.data.datasource import Partitioning

    cfg, _, result, run = written
    # The whole val split in one read, branch as a typed hive partition column (branch=<k> folders).
    ds = ray.data.read_parquet(
        str(run / "data" / "val"), partitioning=Partitioning("hive", field_types={"branch": int})
    )
    batch = ds.take_batch(10_000, batch_format="numpy")
    batch["x"] = np.frombuffer(b"".join(batch["x"]), np.uint8).reshape(-1, 1, 4, 4)  # bytes per row: the codes
    assert len(batch["x"]) == len(batch["idx"])
    assert batch["idx"].dtype == np.int64 and batch["y"].dtype == np.int64
    branch = batch["branch"].astype(int)
    np.testing.assert_array_equal(np.bincount(branch), [br.splits["val"].rows for br in result.manifest.branches])
    for k in range(cfg.split.k):
        mine = branch == k
        order = np.argsort(batch["idx"][mine])
        want = _read_split_pa(run, "val", k)
        np.testing.assert_array_equal(batch["idx"][mine][order], want["idx"])
        np.testing.assert_array_equal(batch["y"][mine][order], want["y"])
        np.testing.assert_array_equal(batch["x"][mine][order], want["x"])


# -- rows: every image once per branch, disjoint splits, seeded carve ----------------------------------------
def test_every_index_once_and_splits_disjoint(written):
    cfg, _, result, run = written
    n_train, n_test = cfg.source.synthetic.train, cfg.source.synthetic.test
    n_val = round(cfg.split.val_fraction * n_train)
    assert n_val == 40
    for k in range(cfg.split.k):
        got = {s: _read_split_pa(run, s, k)["idx"] for s in SPLITS}
        for s, idx in got.items():
            assert len(np.unique(idx)) == len(idx), f"duplicate idx in {s} branch {k}"
        assert len(got["val"]) == n_val
        assert len(got["train"]) == n_train - n_val
        assert not set(got["train"]) & set(got["val"])
        np.testing.assert_array_equal(np.sort(np.concatenate([got["train"], got["val"]])), np.arange(n_train))
        np.testing.assert_array_equal(got["test"], np.arange(n_test))
        # The carve is the seeded mask, identical in every branch.
        np.testing.assert_array_equal(
            got["val"], np.flatnonzero(val_mask(n_train, cfg.split.val_fraction, cfg.split.seed))
        )


def test_val_carve_is_seeded():
    a, b = val_mask(1000, 0.1, seed=0), val_mask(1000, 0.1, seed=0)
    np.testing.assert_array_equal(a, b)
    assert a.sum() == 100
    c = val_mask(1000, 0.1, seed=1)
    assert c.sum() == 100 and not np.array_equal(a, c)
    assert val_mask(7, 0.25, 0).sum() == round(0.25 * 7)
    assert val_mask(50, 0.0, 0).sum() == 0


def test_values_are_spectral_components_of_the_source(written):
    cfg, _, _, run = written
    source = make_source(cfg.source)
    k = cfg.split.k
    per_branch = {s: [_read_split_pa(run, s, b) for b in range(k)] for s in SPLITS}
    for split, source_split in (("train", "train"), ("val", "train"), ("test", "test")):
        idx = per_branch[split][0]["idx"]
        pick = idx[[0, len(idx) // 2, -1]]
        for i in pick:
            x, y = source.read(source_split, int(i), int(i) + 1)
            want = spectral_components(x.astype(np.float32) / 255, 2, 2, "dct")[0]  # (K, C, h, w)
            for b in range(k):
                rows = per_branch[split][b]
                row = int(np.searchsorted(rows["idx"], i))
                assert rows["idx"][row] == i
                assert rows["y"][row] == y[0]
                np.testing.assert_allclose(rows["v"][row], want[b], atol=rows["tol"])
    # Branch 0 of dct is sqrt(K) x the 2x2 average pool, pixels in [0, 1].
    x0 = per_branch["test"][0]["v"]
    assert x0.min() >= 0 and x0.max() <= 2.0 + 1e-6


def test_labels_match_source(written):
    cfg, _, _, run = written
    source = make_source(cfg.source)
    _, y_train = source.read("train", 0, source.count("train"))
    _, y_test = source.read("test", 0, source.count("test"))
    for b in range(cfg.split.k):
        for split, y_src in (("train", y_train), ("val", y_train), ("test", y_test)):
            rows = _read_split_pa(run, split, b)
            np.testing.assert_array_equal(rows["y"], y_src[rows["idx"]])


# -- manifest ---------------------------------------------------------------------------------------------
def test_manifest_fields(written):
    """The JSON on disk (docs/storage.md is its contract), and that it reads back as the same manifest."""
    cfg, storage, result, run = written
    m = json.loads((run / MANIFEST).read_text())
    assert load_manifest(storage) == result.manifest and result.manifest.to_json() == m
    assert m["version"] == 3
    assert m["config_hash"] == config_hash(cfg.source, cfg.split) and len(m["config_hash"]) == 64
    src = m["source"]
    assert (src["name"], src["resolution"], src["channels"], src["classes"]) == ("synthetic", [8, 8], 1, 4)
    assert src["counts"] == {"train": 400, "test": 100}
    assert src["class_names"] == ["0", "1", "2", "3"]
    (main,) = m["sources"]
    nodes = main.pop("nodes")  # the Ray node ids whose tasks read the source
    assert main == {
        "src": 0,
        "name": "synthetic",
        "root": None,
        "limit": None,
        "resolution": [8, 8],
        "factors": [1, 1],
        "counts": {"train": 400, "test": 100},
        "branches": [0, 1, 2, 3],
        "resources": {},
    }
    assert nodes and all(isinstance(n, str) and len(n) == 56 for n in nodes)
    sp = m["split"]
    assert (sp["r"], sp["c"], sp["K"], sp["transform"], sp["dtype"]) == (2, 2, 4, "dct", "uint8")
    np.testing.assert_allclose(np.array(sp["matrix"]), transform_matrix("dct", 4), atol=1e-12)
    assert sp["branch_shape"] == [1, 4, 4]
    assert m["val_fraction"] == cfg.split.val_fraction and m["seed"] == cfg.split.seed
    assert len(m["branches"]) == 4
    on_disk = {f for f in _files(run) if f.endswith(".parquet")}
    listed = set()
    for k, br in enumerate(m["branches"]):
        assert br["k"] == k
        assert set(br["splits"]) == set(SPLITS)
        for split, entry in br["splits"].items():
            assert entry["rows"] == {"train": 360, "val": 40, "test": 100}[split]
            assert entry["rows_by_source"] == {"0": entry["rows"]}
            assert entry["files"] and all(f.startswith(f"data/{split}/branch={k}/") for f in entry["files"])
            assert sum(pq.read_metadata(run / f).num_rows for f in entry["files"]) == entry["rows"]
            listed |= set(entry["files"])
        assert len(br["mean"]) == len(br["std"]) == 1
        # uint8 codes span the branch's exact range for pixels in [0, 1], from the matrix: [sum T-, sum T+]
        t = np.array(sp["matrix"])[k]
        assert br["offset"] == pytest.approx([t[t < 0].sum()]) and br["scale"] == pytest.approx([np.abs(t).sum() / 255])
    assert listed == on_disk  # the manifest lists exactly the files there are
    assert 0 < m["raw_bytes"]["train"] and set(m["raw_bytes"]) == set(SPLITS)


def test_manifest_statistics_match_numpy(written):
    cfg, _, result, run = written
    for k, br in enumerate(result.manifest.branches):
        x = _read_split_pa(run, "train", k)["v"].astype(np.float64)  # (N, C, h, w): the values training sees
        np.testing.assert_allclose(br.mean, x.mean(axis=(0, 2, 3)), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(br.std, x.std(axis=(0, 2, 3)), rtol=1e-5, atol=1e-9)
    # Only train rows count: including val would move the numbers.
    x_all = np.concatenate([_read_split_pa(run, s, 0)["v"] for s in ("train", "val")]).astype(np.float64)
    assert not np.isclose(result.manifest.branches[0].mean[0], x_all.mean(), rtol=1e-9, atol=0)


def test_read_branch_via_shards(written):
    cfg, storage, _, run = written
    m = load_manifest(storage)
    for split in SPLITS:
        bd = read_branch(storage, m, split, 3)
        want = _read_split_pa(run, split, 3)
        assert len(bd) == m.branches[3].splits[split].rows
        np.testing.assert_array_equal(bd.idx, want["idx"])
        np.testing.assert_array_equal(bd.y, want["y"])
        np.testing.assert_array_equal(bd.src, want["src"])
        np.testing.assert_array_equal(bd.x, want["x"])  # the stored codes
        np.testing.assert_allclose(bd.values(), want["v"], rtol=1e-6, atol=1e-7)


def test_single_process_reference_writes_the_same(written, tmp_path):
    cfg, _, result, run = written
    storage = RunStorage(str(tmp_path / "ref"))
    source = make_source(cfg.source)
    records = write_single_process(source, cfg.split, storage)
    ref = build_manifest(source, cfg.source, cfg.split, records)
    got = result.manifest
    assert (ref.config_hash, ref.source, ref.split, ref.counts) == (got.config_hash, got.source, got.split, got.counts)
    for a, b in zip(ref.branches, got.branches):
        assert a.splits == b.splits
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-12)
    for f in _files(run):
        if f.endswith(".parquet"):
            assert pq.read_table(tmp_path / "ref" / f).equals(pq.read_table(run / f)), f


# -- idempotence, conflicts, interruptions, crashes ------------------------------------------------------------
def test_rerun_same_config_is_up_to_date(written):
    cfg, storage, result, run = written
    before = {f: (run / f).stat().st_mtime_ns for f in _files(run)}
    again = split_dataset(cfg.source, cfg.split, storage)
    assert again.up_to_date and again.manifest == result.manifest
    assert {f: (run / f).stat().st_mtime_ns for f in _files(run)} == before
    # images_per_task changes file boundaries and download only fetches files: neither changes the content.
    cfg2 = tiny_config(str(run), **{"split.images_per_task": 77, "source.download": True})
    assert split_dataset(cfg2.source, cfg2.split, storage).up_to_date
    assert {f: (run / f).stat().st_mtime_ns for f in _files(run)} == before


def test_config_hash_covers_content_only():
    cfg = tiny_config("/tmp/a")
    base = config_hash(cfg.source, cfg.split)
    assert base == config_hash(tiny_config("/elsewhere").source, tiny_config("/elsewhere").split)  # not the URI
    for key, value in [
        ("split.transform", "identity"),
        ("split.dtype", "float16"),
        ("split.rows", 4),
        ("split.val_fraction", 0.2),
        ("split.seed", 1),
        ("source.limit", 10),
        ("source.synthetic.seed", 3),
    ]:
        other = tiny_config("/tmp/a", **{key: value})
        assert config_hash(other.source, other.split) != base, key


def test_different_config_conflicts_unless_overwrite(ray_session, tmp_path):
    cfg = tiny_config(str(tmp_path / "run"))
    storage = RunStorage(cfg.storage.uri)
    first = split_dataset(cfg.source, cfg.split, storage).manifest
    other = tiny_config(cfg.storage.uri, **{"split.transform": "haar", "split.seed": 5})
    with pytest.raises(SplitConflictError, match=r"different configuration.*--overwrite"):
        split_dataset(other.source, other.split, storage)
    assert load_manifest(storage) == first  # untouched
    res = split_dataset(other.source, other.split, storage, overwrite=True)
    assert not res.up_to_date
    m = load_manifest(storage)
    assert (m.split.transform, m.seed) == ("haar", 5) and m.config_hash != first.config_hash
    np.testing.assert_array_equal(
        read_branch(storage, m, "val", 0).idx, np.flatnonzero(val_mask(400, other.split.val_fraction, 5))
    )
    assert not np.array_equal(read_branch(storage, m, "val", 0).idx, np.flatnonzero(val_mask(400, 0.1, 0)))
    # Only files of the new split remain, and the data follows the new transform.
    listed = {f for b in m.branches for e in b.splits.values() for f in e.files}
    assert {f for f in _files(tmp_path / "run") if f.endswith(".parquet")} == listed
    source = make_source(other.source)
    x, _ = source.read("test", 0, 3)
    want = spectral_components(x.astype(np.float32) / 255, 2, 2, "haar")
    for b in range(4):
        tol = m.branches[b].scale[0] / 2 + 1e-6
        np.testing.assert_allclose(read_branch(storage, m, "test", b).values()[:3], want[:, b], atol=tol)


def test_interrupted_split_is_redone(ray_session, tmp_path):
    cfg = tiny_config(str(tmp_path / "run"))
    run = tmp_path / "run"
    storage = RunStorage(cfg.storage.uri)
    first = split_dataset(cfg.source, cfg.split, storage).manifest
    (run / MANIFEST).unlink()
    stray = [
        run / "data" / "train" / "branch=0" / "part-999999999.parquet",
        run / "data" / "train" / "branch=9" / "x.parquet",
        run / "data" / "val" / "branch=1" / ".part-000000000.parquet.tmp-dead",
    ]
    for p in stray:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half a file")
    res = split_dataset(cfg.source, cfg.split, storage)
    assert not res.up_to_date
    assert not [p for p in stray if p.exists()]
    assert not (run / "data" / "train" / "branch=9").exists()
    m = load_manifest(storage)
    assert m.branches == first.branches
    for f in _files(run):
        assert f == MANIFEST or PART_RE.match(f), f


def test_crash_mid_write_leaves_no_manifest(ray_session, tmp_path):
    src = tmp_path / "imgs"
    files = write_imagefolder(src, classes=("a", "b"), per_class={"train": 4, "test": 2}, size=(4, 4), mode="RGB")
    bad = files["train"][6][0]  # the 7th train image, in the last of four 2-image tasks
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 5)
    run = tmp_path / "run"
    cfg = tiny_config(
        str(run),
        **{
            "source.name": "imagefolder",
            "source.root": str(src),
            "source.image_size": [4, 4],
            "split.images_per_task": 2,
        },
    )
    storage = RunStorage(cfg.storage.uri)
    with pytest.raises(SourceError, match=rf"^{re.escape(str(bad))}: cannot decode image"):
        split_dataset(cfg.source, cfg.split, storage)
    assert not (run / MANIFEST).exists()
    # Repaired, the same run completes and holds no leftovers of the crashed attempt.
    from PIL import Image

    Image.fromarray(files["train"][6][2]).save(bad)
    res = split_dataset(cfg.source, cfg.split, storage)
    assert not res.up_to_date and (run / MANIFEST).exists()
    m = load_manifest(storage)
    assert m.counts == {"train": 7, "val": 1, "test": 4}
    listed = {f for b in m.branches for e in b.splits.values() for f in e.files}
    assert {f for f in _files(run) if f != MANIFEST} == listed
    x = read_branch(storage, m, "test", 0).values()
    want = spectral_components(
        np.stack([a.transpose(2, 0, 1) for _, _, a in files["test"]]).astype(np.float32) / 255, 2, 2
    )
    np.testing.assert_allclose(x, want[:, 0], atol=m.branches[0].scale[0] / 2 + 1e-6)


def test_task_errors_are_classified_by_their_cause_chain():
    """``user_error`` finds our error in a chain (``__cause__``, or Ray's ``.cause``), never by parsing text."""
    from data_split.errors import user_error
    from data_split.storage import StorageError

    source_error = SourceError("/d/a.png: cannot decode image (bad)")
    try:
        try:
            raise source_error
        except SourceError as e:
            raise RuntimeError("UDF failed") from e
    except RuntimeError as wrapped:
        assert user_error(wrapped) is source_error

    from ray.exceptions import RayTaskError

    storage_error = StorageError("cannot write s3://b/p/f on e: boom")
    remote = RayTaskError(
        "Write", "ray::Write()\n  File ...\n(long remote traceback)", storage_error
    ).as_instanceof_cause()
    assert isinstance(remote, StorageError) and str(remote) != str(storage_error)  # what ray.get raises
    assert user_error(remote) is storage_error
    # text that merely mentions an error class is not an error of ours
    assert user_error(RuntimeError("x\ndata_split.storage.StorageError: cannot write s3://b/p/f\n")) is None


# -- other shapes, channels and transforms ------------------------------------------------------------------
def test_rectangular_split_rgb_identity(ray_session, tmp_path):
    """1 x 4 identity on 3-channel 4x8 images: branch k is exactly the polyphase component x[:, :, 0::1, k::4]."""
    cfg = tiny_config(
        str(tmp_path / "run"),
        **{
            "source.synthetic": {"train": 30, "test": 10, "height": 4, "width": 8, "channels": 3, "classes": 3},
            "split.rows": 1,
            "split.cols": 4,
            "split.transform": "identity",
            "split.val_fraction": 0.2,
            "source.limit": 20,
            "split.dtype": "float32",
        },
    )
    storage = RunStorage(cfg.storage.uri)
    m = split_dataset(cfg.source, cfg.split, storage).manifest
    assert m.split.branch_shape == [3, 4, 2] and m.counts == {"train": 16, "val": 4, "test": 10}
    assert m.source.counts == {"train": 20, "test": 10}  # source.limit keeps the first 20
    source = make_source(cfg.source)
    x, y = source.read("train", 0, 20)
    poly = polyphase_split(x.astype(np.float32) / 255, 1, 4)  # (N, C, h, w, K)
    for k in range(4):
        tr, va = read_branch(storage, m, "train", k), read_branch(storage, m, "val", k)
        idx = np.concatenate([tr.idx, va.idx])
        assert sorted(idx) == list(range(20))
        assert tr.x.dtype == np.float32 and m.branches[k].offset is None  # split.dtype float32: the values
        np.testing.assert_allclose(tr.x, poly[tr.idx, ..., k], rtol=1e-6, atol=0)  # x * (1/255) vs x / 255: 1 ulp
        np.testing.assert_array_equal(va.y, y[va.idx])
        assert len(m.branches[k].mean) == 3
        np.testing.assert_allclose(m.branches[k].mean, tr.x.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-6)


# -- configuration errors (YAML and overrides) -------------------------------------------------------------
@pytest.mark.parametrize(
    "yaml_text,override,match",
    [
        ("split:\n  transform: fft\n", {"split.transform": "fft"}, r"split\.transform.*'fft'"),
        ("split:\n  rowz: 2\n", {"split.rowz": 2}, r"unknown config key\(s\) split\.rowz"),
        ("sourse:\n  name: mnist\n", {"sourse.name": "mnist"}, r"unknown config key\(s\) sourse"),
        ("split:\n  rows: two\n", {"split.rows": "two"}, r"split\.rows.*expected int.*'two'"),
        ("split:\n  rows: 2.5\n", {"split.rows": 2.5}, r"split\.rows.*expected int"),
        ("split:\n  rows: true\n", {"split.rows": True}, r"split\.rows.*expected int"),
        ("source:\n  limit: ten\n", {"source.limit": "ten"}, r"source\.limit.*'ten'"),
        ("split:\n  val_fraction: '0.1'\n", {"split.val_fraction": "0.1"}, r"split\.val_fraction.*expected float"),
        ("split:\n  val_fraction: 1.5\n", {"split.val_fraction": 1.5}, r"split\.val_fraction must be in \[0, 1\)"),
        ("source:\n  name: svhn\n", {"source.name": "svhn"}, r"source\.name.*'svhn'"),
        (
            "split: {rows: 3, cols: 1, transform: haar}\n",
            {"split.rows": 3, "split.transform": "haar", "split.cols": 1},
            r"K=3",
        ),
        (
            "source:\n  image_size: [28, 28, 3]\n",
            {"source.image_size": [28, 28, 3]},
            r"source\.image_size must be S or \[H, W\]",
        ),
        ("source:\n  synthetic:\n    height: [8]\n", {"source.synthetic.height": [8]}, r"source\.synthetic\.height"),
    ],
)
def test_bad_config(tmp_path, yaml_text, override, match):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=match) as err:
        load_config(path)
    assert str(path) in str(err.value)
    with pytest.raises(ConfigError, match=match):
        load_config(None, override)


def test_good_config_yaml(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(
        "source:\n  name: mnist\n  root: /data/m\n  limit: 100\nsplit:\n  rows: 4\n  cols: 4\n  transform: haar\n"
    )
    cfg = load_config(path, {"split.val_fraction": 0.25})
    assert cfg.source == SourceConfig(name="mnist", root="/data/m", limit=100)
    assert cfg.split == SplitConfig(rows=4, cols=4, transform="haar", val_fraction=0.25)
    assert cfg.split.k == 16


# -- S3 end to end ---------------------------------------------------------------------------------------------
def test_split_to_s3(ray_session, s3_endpoint):
    import boto3

    prefix = f"split-{uuid.uuid4().hex[:8]}"
    cfg = tiny_config(f"s3://test-bucket/{prefix}", **{"storage.endpoint_url": s3_endpoint})
    storage = RunStorage.from_config(cfg.storage)
    res = split_dataset(cfg.source, cfg.split, storage)
    assert not res.up_to_date
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = [
        o["Key"][len(prefix) + 1 :]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket="test-bucket", Prefix=prefix + "/")
        for o in page.get("Contents", [])
    ]
    assert "data/manifest.json" in keys
    parts = [k for k in keys if k != "data/manifest.json"]
    assert parts and all(PART_RE.match(k) for k in parts), parts
    m = load_manifest(storage)
    assert m == res.manifest
    manifest_obj = json.loads(client.get_object(Bucket="test-bucket", Key=f"{prefix}/{MANIFEST}")["Body"].read())
    assert manifest_obj["config_hash"] == config_hash(cfg.source, cfg.split)
    assert {f for b in m.branches for e in b.splits.values() for f in e.files} == set(parts)
    source = make_source(cfg.source)
    for split, source_split in (("val", "train"), ("test", "test")):
        bd = read_branch(storage, m, split, 2)
        assert len(bd) == m.branches[2].splits[split].rows
        x, y = source.read(source_split, 0, source.count(source_split))
        np.testing.assert_array_equal(bd.y, y[bd.idx])
        want = spectral_components(x[bd.idx[:5]].astype(np.float32) / 255, 2, 2, "dct")[:, 2]
        np.testing.assert_allclose(bd.values()[:5], want, atol=m.branches[2].scale[0] / 2 + 1e-6)
    # The driver's view (s3fs caches listings) sees what the Ray workers wrote.
    assert storage.ls("data") == ["manifest.json", "test", "train", "val"]
    assert storage.ls("data/train") == [f"branch={k}" for k in range(4)]
    assert split_dataset(cfg.source, cfg.split, storage).up_to_date
    again = split_dataset(cfg.source, cfg.split, RunStorage.from_config(cfg.storage))
    assert again.up_to_date
    assert sorted(keys) == sorted(
        o["Key"][len(prefix) + 1 :]
        for o in client.list_objects_v2(Bucket="test-bucket", Prefix=prefix + "/")["Contents"]
    )
