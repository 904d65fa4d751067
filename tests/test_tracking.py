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


# -- MLflow (tracking.mlflow_uri), read back from a real local store with MlflowClient ----------------------
def _epoch(storage: RunStorage, k: int, epoch: int) -> None:
    record = {
        "epoch": epoch,
        "loss": 1.0 / epoch + k,
        "val_loss": 1.5 - 0.1 * epoch,
        "val_acc": 0.2 * epoch + 0.01 * k,
        "lr": 1e-3 / epoch,
        "images_per_s": 400.0 + epoch,
        "seconds": 0.1,
        "time": 1000.0 + 10 * epoch + k,
    }
    storage.append_line(layout.metrics(k), json.dumps(record))


def _mlflow_runs(uri: str) -> tuple:
    """(client, parent run, {k: child run}) of the experiment ``spectral`` at ``uri``."""
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking_mlflow import BRANCH_TAG, PARENT_TAG

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("spectral").experiment_id])
    parents = [r for r in runs if BRANCH_TAG not in r.data.tags]
    assert len(parents) == 1, [r.data.tags for r in runs]
    children = {int(r.data.tags[BRANCH_TAG]): r for r in runs if BRANCH_TAG in r.data.tags}
    assert len(children) == len(runs) - 1  # one child per branch, never two
    assert all(r.data.tags[PARENT_TAG] == parents[0].info.run_id for r in children.values())
    return client, parents[0], children


def _history(client, run, tag: str) -> list[tuple[int, float, int]]:
    return sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(run.info.run_id, tag))


def test_mlflow_has_a_parent_run_a_child_per_branch_and_a_resume_duplicates_nothing(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from conftest import tiny_config
    from data_split.errors import ConfigError
    from orchestrator import tracking_mlflow
    from orchestrator.tracking import BRANCH_TAGS

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's file store: no server, no database
    uri = f"file:{tmp_path / 'mlruns'}"
    cfg = tiny_config(str(tmp_path / "run"), **{"tracking.mlflow_uri": uri})  # train.epochs: 2
    storage = RunStorage.from_config(cfg.storage)
    K = 2
    tracking_mlflow.check(cfg)  # api.run's, before the split
    with pytest.raises(ConfigError, match="tracking.mlflow_uri nowhere://x: cannot log to MLflow"):
        tracking_mlflow.check(cfg.replace(**{"tracking.mlflow_uri": "nowhere://x"}))
    with tracking_mlflow.job(cfg, storage, K) as runs:  # api.train's calls, as its epochs advance
        for k in range(K):
            _epoch(storage, k, 1)
        runs.update({0: {"epoch": 1}, 1: {"epoch": 1}})
        for k in range(K):
            _epoch(storage, k, 2)
            storage.write_json(layout.result(k), {"k": k})
        runs.update({0: {"epoch": 2}})
        runs.log_branches(range(K))
    for method, acc in (("uniform", 0.7), ("geometric", 0.75)):
        rec = {"method": method, "val_acc": acc, "test_acc": acc - 0.05, "val_nll": 0.9, "test_nll": 1.0}
        storage.write_json(layout.ensemble_record(method), rec)
    storage.write_json(layout.WEIGHTS, {"method": "geometric", "val_acc": 0.75, "test_acc": 0.7})
    with tracking_mlflow.job(cfg, storage, K) as runs:  # api.ensemble's
        runs.log_ensemble()

    more = cfg.replace(**{"train.epochs": 3})  # the run resumed for one more epoch, then ensembled again
    with tracking_mlflow.job(more, storage, K) as runs:
        for k in range(K):
            _epoch(storage, k, 3)
        runs.log_branches(range(K))
    with tracking_mlflow.job(more, storage, K) as runs:
        runs.log_ensemble()

    client, parent, children = _mlflow_runs(uri)
    assert sorted(children) == [0, 1]
    for k, child in children.items():
        params = child.data.params
        assert (params["k"], params["K"], params["model.name"]) == (str(k), "2", "fc4")
        assert (params["train.lr"], params["train.batch_size"], params["train.epochs"]) == ("0.001", "64", "2")
        assert child.info.status == "FINISHED" and child.info.run_name == f"branch {k}"
        metrics = layout.read_metrics(storage, k)
        for tag in BRANCH_TAGS:  # each epoch exactly once, at its wall time
            expected = [(m["epoch"], pytest.approx(m[tag]), int(m["time"] * 1000)) for m in metrics]
            assert _history(client, child, tag) == expected, (k, tag)
    assert parent.info.status == "FINISHED" and parent.data.tags["spectral.run"] == storage.url()
    assert parent.data.params["split.rows"] == "2" and parent.data.params["K"] == "2"
    found = parent.data.metrics
    assert found["geometric/val_acc"] == 0.75 and found["uniform/test_acc"] == pytest.approx(0.65)
    assert found["test_acc"] == 0.7 and parent.data.tags["spectral.weights"] == "geometric"
    assert [step for step, *_ in _history(client, parent, "geometric/test_acc")] == [2]  # not logged again


def test_mlflow_is_imported_only_when_set_and_missing_says_what_to_install(tmp_path, monkeypatch):
    import sys

    from conftest import tiny_config
    from data_split.errors import ConfigError
    from orchestrator import tracking_mlflow

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed: `import mlflow` raises ImportError
    cfg = tiny_config(str(tmp_path / "run"))
    tracking_mlflow.check(cfg)  # unset: nothing imported, nothing logged
    with tracking_mlflow.job(cfg, RunStorage.from_config(cfg.storage), 4) as runs:
        runs.log_branches(range(4))
    with pytest.raises(ConfigError, match="tracking.mlflow_uri .*pip install mlflow-skinny"):
        tracking_mlflow.check(cfg.replace(**{"tracking.mlflow_uri": f"file:{tmp_path}"}))


@pytest.mark.slow
def test_a_job_logs_its_branches_and_ensemble_to_mlflow(finished_job, tmp_path, monkeypatch):
    """The API's wiring: ``api.train`` (every branch finished: nothing retrains) and ``api.ensemble`` on a copy."""
    import shutil

    pytest.importorskip("mlflow")
    from orchestrator import api

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    job_cfg, _ = finished_job
    shutil.copytree(job_cfg.storage.uri, tmp_path / "run")
    uri = f"file:{tmp_path / 'mlruns'}"
    overrides = {"storage.uri": str(tmp_path / "run"), "tracking.mlflow_uri": uri, "ensemble.weights": "geometric"}
    cfg = job_cfg.replace(**overrides)
    api.train(cfg)
    api.ensemble(cfg)
    storage = RunStorage.from_config(cfg.storage)
    client, parent, children = _mlflow_runs(uri)
    assert sorted(children) == list(range(cfg.split.k))
    for k, child in children.items():
        assert [v for _, v, _ in _history(client, child, "val_acc")] == pytest.approx(
            [m["val_acc"] for m in layout.read_metrics(storage, k)]
        )
    tuned = storage.read_json(layout.ensemble_record("tuned"))  # from the job's own evaluate
    assert parent.data.metrics["tuned/test_acc"] == pytest.approx(tuned["test_acc"])
    assert parent.data.tags["spectral.weights"] == "geometric"
