"""TensorBoard event files of a run, written through ``RunStorage`` like every other output (so on S3 too).

    <run>/branches/<k>/tensorboard/events.out.tfevents.0.spectral   per epoch: loss, val_loss, val_acc, lr,
                                                                   images_per_s (from metrics.jsonl)
    <run>/ensemble/tensorboard/events.out.tfevents.0.spectral       per weight rule: <rule>/val_acc,
                                                                   test_acc, val_nll, test_nll

``tensorboard --logdir <run>`` then shows the K branches side by side (one TensorBoard run per branch, the
same tags). A file is rebuilt whole from the run's records at each write (a few hundred bytes per epoch),
atomically, so a crash never leaves half a record, and its earlier records stay byte-identical, which
TensorBoard's tailing reader expects. The encoding (TFRecord framing with masked CRC-32C around
``tensorflow.Event`` protobufs with ``simple_value`` summaries) is written out here, a few lines, instead of
depending on TensorFlow or tensorboard; ``tests/test_tracking.py`` reads the files back with
``tensorboardX``'s own protobuf classes.

``BranchEvents`` keeps the branches' files current while they train: ``api.train`` (and ``api.baseline``,
whose run ``<run>/baseline`` has the same layout) feeds it the progress board's snapshots and rewrites a
branch's file when its epoch advances; the DDP baseline (``orchestrator.ddp.train_ddp``) writes
``<run>/baseline-ddp/branches/0/tensorboard`` once its group is done. MLflow, when configured
(``tracking.mlflow_uri``), is fed the same way from the same records: ``orchestrator.tracking_mlflow``.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterable

from data_split import layout
from data_split.storage import RunStorage

log = logging.getLogger(__name__)

BRANCH_TAGS = ("loss", "val_loss", "val_acc", "lr", "images_per_s")
ENSEMBLE_TAGS = ("val_acc", "test_acc", "val_nll", "test_nll")


# -- encoding: protobuf fields and TFRecord framing ------------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # int64 as protobuf writes it
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _bytes_field(number: int, data: bytes) -> bytes:
    return _field(number, 2, _varint(len(data)) + data)


def _scalar_value(tag: str, value: float) -> bytes:
    """``Summary.Value{tag (1), simple_value (2, float)}``."""
    return _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", value))


def event(
    wall_time: float, step: int = 0, *, scalars: dict[str, float] | None = None, file_version: str | None = None
) -> bytes:
    """One ``Event{wall_time (1, double), step (2, int64), file_version (3), summary (5){value (1)...}}``."""
    out = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if scalars:
        out += _bytes_field(5, b"".join(_bytes_field(1, _scalar_value(t, v)) for t, v in scalars.items()))
    return out


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """TFRecord: uint64 length, masked CRC of the length, the data, masked CRC of the data (little-endian)."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def events_file(rows: Iterable[tuple[int, float, dict[str, float]]], start_time: float) -> bytes:
    """A whole event file: the version record, then one event per ``(step, wall_time, scalars)``."""
    out = [record(event(start_time, file_version="brain.Event:2"))]
    out += [record(event(wall, step, scalars=scalars)) for step, wall, scalars in rows if scalars]
    return b"".join(out)


# -- the run's files ------------------------------------------------------------------------------------------
def _finite(values: dict) -> dict[str, float]:
    return {t: float(v) for t, v in values.items() if isinstance(v, (int, float)) and v == v and abs(v) != float("inf")}


def epoch_scalars(record: dict) -> dict[str, float]:
    """The tracked values (``BRANCH_TAGS``) of one ``metrics.jsonl`` record, the finite ones."""
    return _finite({t: record.get(t) for t in BRANCH_TAGS})


def ensemble_scalars(storage: RunStorage) -> dict[str, float]:
    """Every evaluated weight rule's results (``ensemble/<rule>.json``) as ``<rule>/<metric>`` (``ENSEMBLE_TAGS``)."""
    scalars: dict[str, float] = {}
    for name in storage.ls(layout.ENSEMBLE):
        if name.endswith(".json") and name != "weights.json":
            rec = storage.read_json(layout.ensemble_record(name.removesuffix(".json")))
            method = rec.get("method", name.removesuffix(".json"))
            scalars.update({f"{method}/{t}": v for t, v in _finite({t: rec.get(t) for t in ENSEMBLE_TAGS}).items()})
    return scalars


def write_branch_events(storage: RunStorage, k: int) -> int:
    """Rebuild branch ``k``'s event file from its ``metrics.jsonl``; return the epochs in it (0: nothing written)."""
    metrics = layout.read_metrics(storage, k)
    if not metrics:
        return 0
    rows = [(int(m["epoch"]), float(m.get("time") or 0.0), epoch_scalars(m)) for m in metrics]
    storage.write_bytes(layout.branch_events(k), events_file(rows, rows[0][1]))
    return len(rows)


def write_ensemble_events(storage: RunStorage, epochs: int) -> None:
    """The ensembles' results (``ensemble/<rule>.json``) as scalars ``<rule>/<metric>`` at step ``epochs``."""
    scalars = ensemble_scalars(storage)
    if scalars:
        now = time.time()
        storage.write_bytes(layout.ENSEMBLE_EVENTS, events_file([(epochs, now, scalars)], now))


class BranchEvents:
    """Keeps each branch's event file current during training from the progress board's snapshots."""

    def __init__(self, storage: RunStorage) -> None:
        self.storage = storage
        self.written: dict[int, int] = {}  # branch -> epochs in its file

    def update(self, snapshot: dict[int, dict]) -> None:
        for k, status in snapshot.items():
            if status.get("epoch", 0) > self.written.get(k, 0):
                self.write(k)

    def write(self, k: int) -> None:
        try:
            self.written[k] = write_branch_events(self.storage, k)
        except Exception as e:  # tracking never fails a training run; the next epoch tries again
            log.warning("could not write the TensorBoard events of branch %d: %s", k, e)

    def finish(self, ks: Iterable[int]) -> None:
        for k in ks:
            self.write(k)
