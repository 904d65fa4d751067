"""The run report on a fake run: report.json, the markdown table, the PNGs, the optional baseline row."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pytest

from data_split.layout import MANIFEST_VERSION
from data_split.storage import RunStorage
from orchestrator.ensemble import evaluate_ensemble, write_weights
from orchestrator.report import build_report
from orchestrator.report_text import TABLE_HEADER, paper_table

K, CLASSES, N = 4, 3, 30
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BRANCH_BYTES = 1_111_490  # 1.06 MiB, the paper's sub4 branch size
BASELINE_BYTES = 17_343_201  # 16.54 MiB
TEST_ACCS = [0.91, 0.85, 0.8, 0.7525]
TRAIN_SECONDS = [872.0, 850.4, 801.0, 790.0]
PEAK_MEMORY = [100 * 2**20, 120 * 2**20, 90 * 2**20, 95 * 2**20]


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def write_branch(
    storage: RunStorage,
    k: int,
    rng,
    *,
    model="fc8",
    test_acc=0.9,
    model_bytes=BRANCH_BYTES,
    train_seconds=10.0,
    peak=2**20,
    params=1000,
    epochs=3,
) -> None:
    for split in ("val", "test"):
        y = np.arange(N, dtype=np.int64) % CLASSES
        logits = rng.normal(size=(N, CLASSES)).astype(np.float32)
        logits[np.arange(N), y] += 2.0
        storage.write_bytes(f"branches/{k}/logits_{split}.npy", npy(logits))
        storage.write_bytes(f"branches/{k}/rows_{split}.npy", npy(np.stack([np.arange(N) * 2, y], axis=1)))
    for e in range(1, epochs + 1):
        storage.append_line(
            f"branches/{k}/metrics.jsonl",
            (
                f'{{"epoch": {e}, "loss": {1.0 / e + 0.1 * k}, "val_loss": 1.0, "val_acc": {0.5 + 0.1 * e}, '
                f'"images_per_s": 1000.0, "seconds": 1.0, "lr": 0.001}}'
            ),
        )
    storage.write_json(
        f"branches/{k}/result.json",
        {
            "k": k,
            "model": model,
            "epochs": epochs,
            "params": params,
            "model_bytes": model_bytes,
            "train_loss": 1.0 / epochs + 0.1 * k,
            "val_acc": 0.8,
            "val_nll": 0.5,
            "test_acc": test_acc,
            "test_nll": 0.4,
            "train_seconds": train_seconds,
            "images_per_s": 1000.0,
            "peak_memory_bytes": peak,
            "device": "cpu",
            "in_shape": [1, 14, 14],
            "classes": CLASSES,
        },
    )


@pytest.fixture
def storage(tmp_path):
    storage = RunStorage(str(tmp_path / "run"))
    storage.write_json(
        "data/manifest.json",
        {
            "version": MANIFEST_VERSION,
            "source": {"name": "fashion-mnist", "resolution": [28, 28], "channels": 1, "classes": CLASSES},
            "split": {"r": 2, "c": 2, "K": K, "transform": "dct", "matrix": np.eye(K).tolist()},
        },
    )
    rng = np.random.default_rng(0)
    for k in range(K):
        write_branch(
            storage, k, rng, test_acc=TEST_ACCS[k], train_seconds=TRAIN_SECONDS[k], peak=PEAK_MEMORY[k], params=1000 + k
        )
    # A resumed branch repeats an epoch: the report keeps the last line of each epoch.
    storage.append_line("branches/0/metrics.jsonl", '{"epoch": 3, "loss": 0.05, "val_acc": 0.95}')
    write_weights(storage, evaluate_ensemble(storage, K, "uniform"), chosen=False)
    write_weights(storage, evaluate_ensemble(storage, K, "geometric"), chosen=True)
    return storage


def md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def test_report_json_holds_branches_ensembles_and_totals(storage):
    report = build_report(storage)
    saved = storage.read_json("report/report.json")
    assert saved["branches"] == report["branches"]
    assert [b["k"] for b in saved["branches"]] == list(range(K)) and saved["missing_branches"] == []
    assert [b["test_acc"] for b in saved["branches"]] == TEST_ACCS
    assert [m["epoch"] for m in saved["branches"][0]["metrics"]] == [1, 2, 3]
    assert saved["branches"][0]["metrics"][-1]["loss"] == 0.05
    assert [e["method"] for e in saved["ensembles"]] == ["uniform", "geometric"]
    assert [e["chosen"] for e in saved["ensembles"]] == [False, True] and saved["chosen_ensemble"] == "geometric"
    geometric = storage.read_json("ensemble/weights.json")
    assert saved["ensembles"][1]["test_acc"] == geometric["test_acc"]
    assert saved["baseline"] is None
    assert saved["title"] == "spectral-fc8-sub4 on fashion-mnist (dct)"
    assert saved["split"] == {"r": 2, "c": 2, "K": K, "transform": "dct"}
    assert saved["totals"] == {
        "total_params": 4006,
        "total_model_bytes": 4 * BRANCH_BYTES,
        "total_train_seconds": sum(TRAIN_SECONDS),
        "max_branch_train_seconds": 872.0,
        "max_peak_memory_bytes": 120 * 2**20,
        "max_model_bytes": BRANCH_BYTES,
    }


def test_report_md_has_the_papers_table(storage):
    build_report(storage)
    md = storage.read_bytes("report/report.md").decode()
    uniform = storage.read_json("ensemble/uniform.json")["test_acc"]
    assert "Source: fashion-mnist (28x28) | K = 4 (2x2 split) | transform: dct | model: fc8" in md
    assert md_row(TABLE_HEADER) in md
    assert md_row(["branch 0", "91.00%", "1.06 MB", "872 s"]) in md
    assert md_row(["branch 3", "75.25%", "1.06 MB", "790 s"]) in md
    assert md_row(["spectral-fc8-sub4 (uniform)", f"{100 * uniform:.2f}%", "1.06 MB x 4", "872 s"]) in md
    assert "spectral-fc8-sub4 (geometric)" in md
    assert "full resolution" not in md
    assert "all branches together: 3,313 s" in md and "geometric (chosen)" in md


def test_paper_table_rows_in_order(storage):
    table = paper_table(build_report(storage))
    header, rows = table.header, table.rows
    assert header == ["Network", "Test accuracy", "Model size", "Training time"]
    assert [r[0] for r in rows] == [f"branch {k}" for k in range(K)] + [
        "spectral-fc8-sub4 (uniform)",
        "spectral-fc8-sub4 (geometric)",
    ]


def test_plots_are_valid_pngs(storage):
    build_report(storage)
    for name in ("accuracy.png", "training_curves.png"):
        data = storage.read_bytes(f"report/{name}")
        assert data[:8] == PNG_MAGIC, name
        assert len(data) > 10_000, (name, len(data))  # axes, bars, curves: not an empty canvas


def test_baseline_row_appears_when_the_baseline_exists(storage):
    baseline = RunStorage(storage.uri + "/baseline")
    write_branch(
        baseline,
        0,
        np.random.default_rng(1),
        test_acc=0.9879,
        model_bytes=BASELINE_BYTES,
        train_seconds=1553.0,
        params=4_316_930,
    )
    report = build_report(storage)
    assert report["baseline"]["test_acc"] == 0.9879 and len(report["baseline"]["metrics"]) == 3
    assert report["totals"]["total_params"] == 4006  # the baseline is not a branch
    rows = paper_table(report).rows
    assert rows[0] == ["fc8 (full resolution)", "98.79%", "16.54 MB", "1,553 s"]
    assert md_row(rows[0]) in storage.read_bytes("report/report.md").decode()
    assert storage.read_json("report/report.json")["baseline"]["model_bytes"] == BASELINE_BYTES


def test_extra_ensemble_rows_and_missing_branches(storage):
    record = {**storage.read_json("ensemble/uniform.json"), "method": "exact", "test_acc": 0.5}
    storage.write_json("ensemble/exact.json", record)
    storage.write_json("ensemble/tuned.json", {**record, "method": "tuned", "test_acc": 0.25})
    storage.remove("branches/3/result.json")
    report = build_report(storage)
    assert [e["method"] for e in report["ensembles"]] == ["uniform", "geometric", "tuned", "exact"]
    assert report["missing_branches"] == [3] and len(report["branches"]) == 3
    rows = paper_table(report).rows
    assert ["spectral-fc8-sub4 (tuned)", "25.00%", "1.06 MB x 4", "872 s"] in rows
    assert "**Missing branches** (no result.json): 3" in storage.read_bytes("report/report.md").decode()


def test_small_sizes_and_times_stay_readable(tmp_path):
    storage = RunStorage(str(tmp_path / "tiny"))
    storage.write_json(
        "data/manifest.json",
        {
            "version": MANIFEST_VERSION,
            "source": {"name": "synthetic", "resolution": [8, 8]},
            "split": {"r": 2, "c": 2, "K": 1, "transform": "haar"},
        },
    )
    write_branch(storage, 0, np.random.default_rng(2), model="fc4", model_bytes=2048, train_seconds=0.42)
    rows = paper_table(build_report(storage)).rows
    assert rows == [["branch 0", "90.00%", "2.0 KB", "0.4 s"]]


def test_report_on_s3(s3_endpoint):
    """Every read and write goes through RunStorage, so the report works on object storage too."""
    storage = RunStorage(f"s3://test-bucket/{uuid.uuid4().hex}", endpoint_url=s3_endpoint)
    storage.write_json(
        "data/manifest.json",
        {
            "version": MANIFEST_VERSION,
            "source": {"name": "synthetic", "resolution": [8, 8]},
            "split": {"r": 1, "c": 2, "K": 2, "transform": "dct"},
        },
    )
    rng = np.random.default_rng(3)
    for k in range(2):
        write_branch(storage, k, rng, epochs=2)
    write_branch(RunStorage(storage.uri + "/baseline", endpoint_url=s3_endpoint), 0, rng, epochs=2)
    write_weights(storage, evaluate_ensemble(storage, 2, "geometric"))
    report = build_report(storage)
    assert report["baseline"] is not None and [e["method"] for e in report["ensembles"]] == ["geometric"]
    assert storage.read_bytes("report/accuracy.png")[:8] == PNG_MAGIC
    assert "spectral-fc8-sub2 (geometric)" in storage.read_bytes("report/report.md").decode()
