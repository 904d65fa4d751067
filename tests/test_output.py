"""inference._output: a predict output is complete (``_SUCCESS`` + manifest) or looks like nothing at all."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from data_split import RunStorage, layout
from inference import _output


def write_parts(attempt: RunStorage, n: int, tag: str) -> None:
    """What Ray Data's write_parquet leaves in the attempt's folder: n Parquet files under its own names."""
    for i in range(n):
        table = pa.table({"path": [f"{tag}-{i}-{j}.png" for j in range(3)], "pred": [i, i, i]})
        attempt.write_bytes(f"6f1c_{i:06d}_0.parquet", _parquet(table))


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def read_rows(out: RunStorage) -> list[str]:
    """What a Parquet reader of the prefix sees (it skips names starting with _ or .)."""
    dataset = ds.dataset(out.root, format="parquet")
    return sorted(dataset.to_table().column("path").to_pylist()) if dataset.files else []


def test_an_interrupted_run_leaves_nothing_complete_and_a_rerun_completes_it(tmp_path):
    out = RunStorage(str(tmp_path / "predictions"))
    first = _output.prepare(out, overwrite=False)
    write_parts(first, 2, "first")  # ... and the run is killed before its commit
    assert not _output.is_complete(out)
    assert read_rows(out) == []  # the parts sit under _temporary/: no reader takes them for an output

    second = _output.prepare(out, overwrite=False)  # the re-run clears the leftovers
    assert not out.exists(layout.OUTPUT_TEMPORARY)
    write_parts(second, 3, "second")
    parts = _output.commit(out, second, rows=9, columns=["path", "pred"])
    assert parts == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert _output.is_complete(out) and not out.exists(layout.OUTPUT_TEMPORARY)
    committed = out.read_json(layout.OUTPUT_MANIFEST)
    assert committed["rows"] == 9 and [p["file"] for p in committed["parts"]] == parts
    assert all(p["bytes"] == out.size(p["file"]) for p in committed["parts"])
    assert len(read_rows(out)) == 9 and all(r.startswith("second") for r in read_rows(out))


def test_a_complete_output_is_replaced_only_with_overwrite_and_foreign_files_are_refused(tmp_path):
    out = RunStorage(str(tmp_path / "predictions"))
    attempt = _output.prepare(out, overwrite=False)
    write_parts(attempt, 2, "old")
    _output.commit(out, attempt, rows=6, columns=["path", "pred"])
    with pytest.raises(_output.OutputError, match=r"predictions is complete \(it has _SUCCESS\); pass --overwrite"):
        _output.prepare(out, overwrite=False)

    attempt = _output.prepare(out, overwrite=True)
    write_parts(attempt, 1, "new")
    assert read_rows(out)[0].startswith("old")  # until the commit, the old output is what readers see
    _output.commit(out, attempt, rows=3, columns=["path", "pred"])
    assert out.ls("") == ["_SUCCESS", "_manifest.json", "part-00000.parquet"]  # no part of the old output is left
    assert len(read_rows(out)) == 3 and all(r.startswith("new") for r in read_rows(out))

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"...")
    with pytest.raises(_output.OutputError, match=r"holds files that no predict wrote \(holiday.jpg\)"):
        _output.prepare(RunStorage(str(tmp_path / "photos")), overwrite=True)
