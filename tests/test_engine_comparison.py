"""The engines side by side on a fake run: time to accuracy, the ensemble's per-epoch curve, the report section."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from data_split.layout import MANIFEST_VERSION
from data_split.storage import RunStorage
from orchestrator.engine_comparison import NOT_REACHED, time_to_accuracy
from orchestrator.ensemble import evaluate_ensemble, write_weights
from orchestrator.report import build_report

N, CLASSES, T0 = 20, 2, 1_000_000.0


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_time_to_accuracy_is_the_first_epoch_at_or_above_the_target():
    curve = [
        {"elapsed_s": 10.0, "val_acc": 0.5},
        {"elapsed_s": 20.0, "val_acc": 0.9},
        {"elapsed_s": 30.0, "val_acc": 0.8},
    ]
    assert time_to_accuracy(curve, 0.85) == 20.0
    assert time_to_accuracy(curve, 0.9) == 20.0
    assert time_to_accuracy(curve, 0.95) == NOT_REACHED
    assert time_to_accuracy(curve, None) is None
    assert time_to_accuracy([{"elapsed_s": 5.0, "val_acc": None}], 0.1) == NOT_REACHED


def write_branch(
    storage: RunStorage,
    k: int,
    correct_by_epoch: list[int],
    started: float,
    epoch_end: list[float],
    *,
    epoch_logits: bool = True,
) -> None:
    """A finished branch whose epoch-e validation logits get the first correct_by_epoch[e-1] rows right."""
    y = np.arange(N) % CLASSES
    for e, correct in enumerate(correct_by_epoch, 1):
        logits = np.zeros((N, CLASSES), np.float32)
        logits[np.arange(N), np.where(np.arange(N) < correct, y, 1 - y)] = 1.0
        if epoch_logits:
            storage.write_bytes(f"branches/{k}/epochs/logits_val_{e}.npy", npy(logits))
        storage.append_line(
            f"branches/{k}/metrics.jsonl",
            json.dumps({"epoch": e, "loss": 1.0, "val_acc": correct / N, "time": epoch_end[e - 1]}),
        )
    for split in ("val", "test"):
        storage.write_bytes(f"branches/{k}/logits_{split}.npy", npy(logits))
        storage.write_bytes(f"branches/{k}/rows_{split}.npy", npy(np.stack([np.arange(N), y], axis=1)))
    storage.write_json(
        f"branches/{k}/placement.json", {"isolation": {"process_group": False, "bytes_sent_to_other_branches": 0}}
    )
    storage.write_json(
        f"branches/{k}/result.json",
        {
            "k": k,
            "model": "fc8",
            "epochs": len(correct_by_epoch),
            "params": 10,
            "model_bytes": 40,
            "train_loss": 1.0,
            "val_acc": correct_by_epoch[-1] / N,
            "test_acc": correct_by_epoch[-1] / N,
            "train_seconds": 1.0,
            "started": started,
        },
    )


@pytest.fixture
def run(tmp_path):
    storage = RunStorage(str(tmp_path / "run"))
    storage.write_json(
        "data/manifest.json",
        {
            "version": MANIFEST_VERSION,
            "source": {"name": "synthetic", "classes": CLASSES},
            "split": {"r": 1, "c": 2, "K": 2, "transform": "dct"},
        },
    )
    # two branches in two waves: branch 1 starts when branch 0 is done, so the ensemble's epoch e waits for it
    write_branch(storage, 0, [12, 16], T0 + 1, [T0 + 5, T0 + 9])
    write_branch(storage, 1, [12, 16], T0 + 9, [T0 + 13, T0 + 17])
    write_weights(storage, evaluate_ensemble(storage, 2, "uniform"))
    base = RunStorage(storage.uri + "/baseline")
    base.write_json(
        "data/manifest.json",
        {
            "source": {"name": "synthetic", "classes": CLASSES},
            "split": {"r": 1, "c": 1, "K": 1, "transform": "identity"},
        },
    )
    write_branch(base, 0, [13, 15], T0, [T0 + 20, T0 + 40], epoch_logits=False)  # final val acc 0.75: the target
    storage.write_json(
        "baseline-ddp/result.json",
        {
            "engine": "ddp",
            "workers": 2,
            "allreduce_bytes_per_worker": 4_000_000,
            "test_acc": 0.7,
            "val_acc": 0.7,
            "backend": "gloo",
            "val_curve": [
                {"epoch": 1, "val_acc": 0.6, "elapsed_s": 30.0},
                {"epoch": 2, "val_acc": 0.7, "elapsed_s": 55.0},
            ],
        },
    )
    return storage


def test_report_puts_single_ddp_and_spectral_side_by_side(run):
    report = build_report(run)
    comparison = report["comparison"]
    assert comparison["target_val_acc"] == pytest.approx(0.75)
    single, ddp, spectral = comparison["engines"]
    assert single["engine"] == "single" and single["bytes_per_worker"] == 0
    assert [c["elapsed_s"] for c in single["curve"]] == [20.0, 40.0]
    assert single["time_to_target_s"] == 40.0 and single["wall_s"] == 40.0
    assert ddp["bytes_per_worker"] == 4_000_000 and ddp["time_to_target_s"] == NOT_REACHED
    assert spectral["engine"] == "spectral (uniform)" and spectral["bytes_per_worker"] == 0
    assert spectral["per_epoch_accuracy"] is True
    # epoch e of the ensemble exists when the later wave finishes it, counted from the first branch's start
    assert [c["elapsed_s"] for c in spectral["curve"]] == [12.0, 16.0]
    assert [c["val_acc"] for c in spectral["curve"]] == pytest.approx([0.6, 0.8])
    assert spectral["time_to_target_s"] == 16.0
    md = run.read_bytes("report/report.md").decode()
    assert "## Engines" in md and "4,000,000 (process group)" in md and NOT_REACHED in md and "75.00%" in md


def test_without_epoch_logits_the_ensemble_curve_has_only_its_final_point(run):
    for k in range(2):
        run.remove(f"branches/{k}/epochs")
    spectral = build_report(run)["comparison"]["engines"][2]
    assert spectral["per_epoch_accuracy"] is False
    assert [c["val_acc"] for c in spectral["curve"]] == [None, pytest.approx(0.8)]
    assert spectral["time_to_target_s"] == 16.0


def test_isolation_counts_bytes_written_under_another_branch(tmp_path):
    from orchestrator.branch_task import RecordingStorage, isolation_record

    storage = RecordingStorage(str(tmp_path / "run"))
    storage.write_bytes("branches/0/result.json", b"12345")
    assert isolation_record(storage, 0)["bytes_sent_to_other_branches"] == 0
    storage.write_bytes("branches/1/leak.npy", b"123")  # a branch that wrote for another one is caught
    record = isolation_record(storage, 0)
    assert record["bytes_sent_to_other_branches"] == 3
    assert record["files_written_for_other_branches"] == ["branches/1/leak.npy"]
    assert record["process_group"] is False
