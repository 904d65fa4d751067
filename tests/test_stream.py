"""Streaming branches (``train.data: stream``): every row once per epoch, seeded order, class-mixed batches from a
class-sorted source, bitwise resume, and the same output files as the in-memory path.

The splits are written in-process (``write_single_process``, the same files as the Ray pipeline) with
16-row Parquet row groups, so a tiny split still has many row groups to order and shuffle.
"""

from __future__ import annotations

import dataclasses
import io
import shutil

import numpy as np
import pytest
import torch

import data_split.parquet as parquet
import data_split.parts as parts
import data_split.pipeline as pipeline
from branches import ModelConfig, TrainConfig, train_branch
from branches._stream import StreamingSplit
from branches.data import InMemorySplit, choose_mode, in_memory_bytes
from conftest import tiny_config
from data_split import RunStorage, SourceConfig, SplitConfig, load_manifest, make_source
from data_split.layout import write_manifest
from fixtures_formats import write_imagefolder

FC4 = ModelConfig(name="fc4")
STREAM = TrainConfig(epochs=3, batch_size=32, lr=1e-2, data="stream", shuffle_buffer=64)
CPU = torch.device("cpu")


def write_split(root, source_cfg: SourceConfig, split_cfg: SplitConfig, monkeypatch) -> RunStorage:
    monkeypatch.setattr(parquet, "ROW_GROUP_BYTES", 16 * 16)  # 16 rows of (1, 4, 4) codes
    storage = RunStorage(str(root))
    source = make_source(source_cfg)
    records = pipeline.write_single_process(source, split_cfg, storage)
    write_manifest(storage, parts.build_manifest(source, source_cfg, split_cfg, records))
    return storage


@pytest.fixture
def tiny_split(tmp_path, monkeypatch):
    cfg = tiny_config(str(tmp_path / "unused"))
    return write_split(tmp_path / "data-only", cfg.source, cfg.split, monkeypatch)


def copy_run(storage: RunStorage, dst) -> RunStorage:
    shutil.copytree(storage.path("data"), dst / "data")
    return RunStorage(str(dst))


def load_npy(storage: RunStorage, rel: str) -> np.ndarray:
    return np.load(io.BytesIO(storage.read_bytes(rel)))


def test_an_epoch_streams_every_row_once_in_a_seeded_order(tiny_split):
    m = load_manifest(tiny_split)
    stream = StreamingSplit(tiny_split, m, "train", 1, CPU, shuffle_buffer=64)
    assert sum(stream._row_groups(f) for f in stream.files) >= 8  # many row groups to order
    mem = InMemorySplit(tiny_split, m, "train", 1, CPU)
    want = np.sort(mem.decode(mem.stored).reshape(len(mem), -1).numpy(), axis=0)

    def epoch(seed, e):
        xs, ys = zip(*stream.train_batches(seed, 1, e, 32))
        return torch.cat(xs).reshape(sum(len(y) for y in ys), -1).numpy(), torch.cat(ys).numpy()

    x1, y1 = epoch(0, 1)
    assert len(y1) == len(mem) == 360
    np.testing.assert_array_equal(np.sort(x1, axis=0), want)  # the same rows, each once
    np.testing.assert_array_equal(np.bincount(y1), np.bincount(mem.y_np))
    x1b, y1b = epoch(0, 1)
    np.testing.assert_array_equal(x1b, x1)  # a function of (seed, k, epoch) ...
    assert not np.array_equal(epoch(0, 2)[1], y1) and not np.array_equal(epoch(1, 1)[1], y1)  # ... of each of them


def test_class_sorted_source_gives_class_mixed_batches(tmp_path, monkeypatch):
    files = write_imagefolder(
        tmp_path / "imgs", classes=("a", "b", "c", "d"), per_class={"train": 60, "test": 4}, size=(4, 4), mode="L"
    )
    source_cfg = SourceConfig(name="imagefolder", root=str(tmp_path / "imgs"), image_size=[4, 4], channels=1)
    _, y_source = make_source(source_cfg).read("train", 0, 240)
    assert (np.diff(y_source) >= 0).all() and len(set(y_source)) == 4  # the source is sorted by class
    storage = write_split(tmp_path / "run", source_cfg, SplitConfig(images_per_task=120, val_fraction=0.0), monkeypatch)
    # Each 120-image file holds 2 classes (contiguous source ranges); row groups of 16, a buffer of 4 row groups.
    stream = StreamingSplit(storage, load_manifest(storage), "train", 0, CPU, shuffle_buffer=64)
    batches = [y.numpy() for _, y in stream.train_batches(0, 0, 1, 16)]
    assert sum(len(b) for b in batches) == len(files["train"]) == 240
    # Batches of 16 from 4 balanced classes: every one mixes classes, none is mostly one class, and the
    # first quarter of the epoch already holds every class (a file-by-file read would hold 2).
    assert all(len(set(b)) >= 2 and np.bincount(b).max() <= 12 for b in batches), batches
    assert np.mean([len(set(b)) for b in batches]) >= 3
    assert set(np.concatenate(batches[:4])) == {0, 1, 2, 3}


def test_stream_trains_and_writes_what_memory_writes(tiny_split, tmp_path):
    mem, stream = copy_run(tiny_split, tmp_path / "mem"), copy_run(tiny_split, tmp_path / "stream")
    a = train_branch(mem, 2, FC4, dataclasses.replace(STREAM, data="memory"))
    b = train_branch(stream, 2, FC4, STREAM)
    assert (a["data_mode"], b["data_mode"]) == ("memory", "stream")
    assert b["val_acc"] > 0.6 and b["test_acc"] > 0.6, b  # chance is 0.25
    for split in ("val", "test"):  # the same rows in the same (ascending idx) order, learned as well
        np.testing.assert_array_equal(
            load_npy(mem, f"branches/2/rows_{split}.npy"), load_npy(stream, f"branches/2/rows_{split}.npy")
        )
    assert abs(a["test_acc"] - b["test_acc"]) < 0.1


def test_stream_resume_matches_a_straight_run_bitwise(tiny_split, tmp_path):
    straight, resumed = copy_run(tiny_split, tmp_path / "s"), copy_run(tiny_split, tmp_path / "r")
    train_branch(straight, 0, FC4, STREAM)
    train_branch(resumed, 0, FC4, dataclasses.replace(STREAM, epochs=1))  # the "killed" run: 1 epoch done
    result = train_branch(resumed, 0, FC4, STREAM)
    assert result["resumed_from_epoch"] == 1
    for split in ("val", "test"):
        np.testing.assert_array_equal(
            load_npy(straight, f"branches/0/logits_{split}.npy"), load_npy(resumed, f"branches/0/logits_{split}.npy")
        )


def test_auto_streams_above_the_memory_limit(tiny_split):
    m = load_manifest(tiny_split)
    need = in_memory_bytes(m, 0)
    assert need == 500 * 16  # 500 rows of (1, 4, 4) uint8 codes
    assert choose_mode("auto", m, 0, memory_limit_mb=1) == "memory"
    assert choose_mode("auto", m, 0, memory_limit_mb=0) == "stream"
    assert choose_mode("memory", m, 0, memory_limit_mb=0) == "memory"
    with pytest.raises(ValueError, match=r"train\.data.*'disk'"):
        TrainConfig(data="disk")


def test_stream_from_s3_matches_local(tiny_split, s3_endpoint, monkeypatch):
    import uuid

    cfg = tiny_config("unused")
    s3 = RunStorage(f"s3://test-bucket/stream-{uuid.uuid4().hex[:8]}", endpoint_url=s3_endpoint)
    monkeypatch.setattr(parquet, "ROW_GROUP_BYTES", 16 * 16)  # 16 rows of (1, 4, 4) codes
    source = make_source(cfg.source)
    write_manifest(
        s3, parts.build_manifest(source, cfg.source, cfg.split, pipeline.write_single_process(source, cfg.split, s3))
    )
    local = StreamingSplit(tiny_split, load_manifest(tiny_split), "train", 3, CPU, shuffle_buffer=64)
    remote = StreamingSplit(s3, load_manifest(s3), "train", 3, CPU, shuffle_buffer=64)
    for (xa, ya), (xb, yb) in zip(local.train_batches(0, 3, 2, 32), remote.train_batches(0, 3, 2, 32), strict=True):
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)
        torch.testing.assert_close(ya, yb, rtol=0, atol=0)


def test_augmented_training_resumes_bitwise_and_inexact_flips_are_refused(tiny_split, tmp_path):
    aug = dataclasses.replace(STREAM, data="memory", augment=["crop"], augment_pad=1)
    straight, resumed, plain = (copy_run(tiny_split, tmp_path / n) for n in ("s", "r", "p"))
    train_branch(straight, 1, FC4, aug)
    train_branch(resumed, 1, FC4, dataclasses.replace(aug, epochs=1))
    assert train_branch(resumed, 1, FC4, aug)["resumed_from_epoch"] == 1
    train_branch(plain, 1, FC4, dataclasses.replace(aug, augment=[]))
    a, b, c = (load_npy(s, "branches/1/logits_test.npy") for s in (straight, resumed, plain))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)  # the crop changed what was learned
    with pytest.raises(ValueError, match=r"hflip is not exact for the 2x2 dct split.*exact here: crop"):
        train_branch(copy_run(tiny_split, tmp_path / "x"), 1, FC4, dataclasses.replace(aug, augment=["hflip"]))


# -- outages: a fault-injecting filesystem under the stream ---------------------------------------------------
class Faults:
    """Counts reads through the files it hands out; the reads numbered in ``fail`` (or every read from
    ``fail_from`` on) raise a connection reset, as a dropped S3 connection does mid-body."""

    def __init__(self, fail: set[int] = frozenset(), fail_from: int | None = None) -> None:
        self.fail, self.fail_from, self.reads, self.failed = set(fail), fail_from, 0, 0

    def tick(self) -> None:
        self.reads += 1
        if self.reads in self.fail or (self.fail_from is not None and self.reads >= self.fail_from):
            self.failed += 1
            raise ConnectionResetError(f"connection reset by peer (injected, read {self.reads})")


class FlakyFile(io.BytesIO):
    def __init__(self, data: bytes, faults: Faults) -> None:
        super().__init__(data)
        self.faults = faults

    def read(self, *args):
        self.faults.tick()
        return super().read(*args)


def remote_copy(storage: RunStorage, faults: Faults, monkeypatch) -> RunStorage:
    """The split at ``storage`` copied to a ``memory://`` store (remote: retried), whose opened files are flaky."""
    import uuid

    import data_split.storage as storage_mod

    monkeypatch.setattr(storage_mod, "RETRY_FIRST_DELAY_S", 0.01)
    remote = RunStorage(f"memory://stream-{uuid.uuid4().hex[:8]}", retry_budget_s=0.5)
    for path in storage.fs.find(storage.path("data")):
        remote.write_bytes(path[len(storage.root) + 1 :], storage.fs.cat_file(path))
    cat, open_ = remote.fs.cat_file, remote.fs.open
    monkeypatch.setattr(
        remote.fs,
        "open",
        lambda path, mode="rb", **kw: FlakyFile(cat(path), faults) if mode == "rb" else open_(path, mode, **kw),
    )
    return remote


def epoch_batches(storage: RunStorage, k: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(
        StreamingSplit(storage, load_manifest(storage), "train", k, CPU, shuffle_buffer=64).train_batches(0, k, 1, 32)
    )


def test_reads_failing_mid_epoch_are_retried_and_the_epoch_is_unchanged(tiny_split, monkeypatch, caplog):
    want = epoch_batches(tiny_split)
    count = Faults()
    epoch_batches(remote_copy(tiny_split, count, monkeypatch))  # how many reads an epoch makes
    middle = count.reads // 2
    faults = Faults(fail={middle, middle + 1, middle + 7})  # one row group twice in a row, another once
    got = epoch_batches(remote_copy(tiny_split, faults, monkeypatch))
    assert faults.failed == 3 and sum("retry" in r.message for r in caplog.records) == 3
    assert len(got) == len(want)
    for (xa, ya), (xb, yb) in zip(want, got):  # each row group read again from a fresh file: nothing lost or doubled
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)
        torch.testing.assert_close(ya, yb, rtol=0, atol=0)


def test_an_outage_past_the_budget_in_the_prefetch_thread_fails_the_training_loop(tiny_split, monkeypatch):
    import threading

    from conftest import wait_until
    from data_split.storage import StorageError

    count = Faults()
    epoch_batches(remote_copy(tiny_split, count, monkeypatch))
    faults = Faults(fail_from=count.reads // 2)  # the endpoint goes away half-way through epoch 1, for good
    remote = remote_copy(tiny_split, faults, monkeypatch)
    outcome: dict = {}

    def train() -> None:
        try:
            train_branch(remote, 1, FC4, STREAM)
        except BaseException as e:  # handed to the test thread
            outcome["error"] = e

    trainer = threading.Thread(target=train, name="trainer", daemon=True)
    trainer.start()
    trainer.join(timeout=120)  # a hung prefetch thread would keep the loop waiting here
    assert not trainer.is_alive(), "the training loop hung on a failed read"
    error = outcome.get("error")
    assert isinstance(error, StorageError), error
    assert "row group" in str(error) and "retry_budget_s = 0.5" in str(error) and remote.uri in str(error)
    wait_until(
        lambda: not any(t.name.startswith("branch-prefetch") for t in threading.enumerate()),
        timeout_s=30,
        what="the prefetch thread ended",
    )
    assert not remote.exists("branches/1/result.json")
