"""TensorBoard event files (``orchestrator.tracking``), read back with tensorboardX's protobuf classes."""

from __future__ import annotations

import json
import struct

import pytest

from data_split import RunStorage, layout
from orchestrator.tracking import BranchEvents, write_branch_events

event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
record_writer = pytest.importorskip("tensorboardX.record_writer")


def read_events(data: bytes) -> list:
    """Every Event of a TFRecord file, each record's two CRCs checked with tensorboardX's own masked CRC-32C."""
    events, pos = [], 0
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[pos + 8 : pos + 12])[0] == record_writer.masked_crc32c(header)
        body = data[pos + 12 : pos + 12 + length]
        assert struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])[0] == record_writer.masked_crc32c(body)
        events.append(event_pb2.Event.FromString(body))
        pos += 16 + length
    return events


def scalars(events) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for e in events:
        for v in e.summary.value:
            out.setdefault(v.tag, []).append((e.step, v.simple_value))
    return out


def test_branch_events_hold_every_epoch_and_grow_by_appending(tmp_path):
    storage = RunStorage(str(tmp_path / "run"))
    for epoch in (1, 2):
        storage.append_line(
            layout.metrics(3),
            json.dumps(
                {
                    "epoch": epoch,
                    "loss": 1.0 / epoch,
                    "val_loss": 1.5,
                    "val_acc": 0.25 * epoch,
                    "lr": 1e-3,
                    "images_per_s": 500.0 * epoch,
                    "seconds": 0.1,
                    "time": 1000.0 + epoch,
                }
            ),
        )
        events = BranchEvents(storage)
        events.update({3: {"state": "training", "epoch": epoch}})
        if epoch == 1:
            first = storage.read_bytes(layout.branch_events(3))
    data = storage.read_bytes(layout.branch_events(3))
    assert data.startswith(first)  # earlier records unchanged: TensorBoard's tailing reader sees only new ones
    found = read_events(data)
    assert found[0].file_version == "brain.Event:2"
    values = scalars(found)
    assert set(values) == {"loss", "val_loss", "val_acc", "lr", "images_per_s"}
    assert values["val_acc"] == [(1, 0.25), (2, 0.5)] and values["images_per_s"] == [(1, 500.0), (2, 1000.0)]
    assert [e.wall_time for e in found[1:]] == [1001.0, 1002.0]
    assert write_branch_events(storage, 0) == 0 and not storage.exists(layout.branch_events(0))  # no epochs: no file


@pytest.mark.slow
def test_a_finished_job_has_events_per_branch_and_for_the_ensemble(finished_job):
    cfg, _ = finished_job
    storage = RunStorage.from_config(cfg.storage)
    for k in range(cfg.split.k):
        values = scalars(read_events(storage.read_bytes(layout.branch_events(k))))
        metrics = layout.read_metrics(storage, k)
        assert [step for step, _ in values["val_acc"]] == list(range(1, cfg.train.epochs + 1))
        assert values["loss"] == [(m["epoch"], pytest.approx(m["loss"], rel=1e-6)) for m in metrics]
    ensemble = scalars(read_events(storage.read_bytes(layout.ENSEMBLE_EVENTS)))
    tuned = storage.read_json(layout.ensemble_record("tuned"))
    assert ensemble["tuned/test_acc"] == [(cfg.train.epochs, pytest.approx(tuned["test_acc"], rel=1e-6))]
    assert {"uniform/val_acc", "geometric/val_acc", "exact/val_acc"} <= set(ensemble)
