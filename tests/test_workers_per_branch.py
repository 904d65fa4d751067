"""A branch as a Ray Train group (resources.workers_per_branch: M > 1): K = 2 branches x M = 2 gloo workers on the
session's Ray, their outputs in a one-process branch's layout, the traffic measured, and the ensemble on top."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch

from branches.checkpoint import load_checkpoint
from branches.controls import lr_factor
from conftest import tiny_config
from data_split import RunStorage, layout, load_manifest
from data_split.errors import ConfigError
from holds import Exit
from orchestrator import api
from orchestrator.cli import main
from orchestrator.config import ResourcesConfig
from orchestrator.ddp import global_batches, group_isolation
from orchestrator.launcher import train_branches
from orchestrator.run_config import config_yaml
from test_train import RESULT_KEYS


def test_group_isolation_counts_all_reduce_bytes_within_the_branch_and_none_between():
    members = [
        {
            "rank": r,
            "branch": 3,
            "pid": 10 + r,
            "node_id": "n",
            "files_read": [f"data/train/branch=3/p{r}.parquet"],
            "files_written_for_other_branches": [],
            "bytes_sent_to_other_branches": 0,
        }
        for r in range(2)
    ]
    record = group_isolation(3, members, [400, 400])
    assert record["bytes_sent_to_other_branches"] == 0 and record["allreduce_bytes_within_branch"] == 800
    assert record["group"]["world_size"] == 2 and [m["branch"] for m in record["group"]["members"]] == [3, 3]
    assert record["files_read"] == ["data/train/branch=3/p0.parquet", "data/train/branch=3/p1.parquet"]
    intruder = [members[0], {**members[1], "branch": 4}]  # a group holding another branch's worker would show it
    assert group_isolation(3, intruder, [400, 400])["bytes_sent_to_other_branches"] == 400


def test_a_group_refuses_to_stream_before_any_worker_starts(tiny_split):
    cfg, storage = tiny_split
    streamed = dataclasses.replace(cfg.train, data="stream")
    with pytest.raises(ConfigError, match="train.data: stream.*workers_per_branch"):
        train_branches(storage, 4, cfg.model, streamed, ResourcesConfig(workers_per_branch=2, cpus_per_branch=0.5))


@pytest.mark.slow
def test_two_branches_of_two_ddp_workers_write_a_branchs_outputs_survive_a_killed_worker_and_ensemble(
    ray_session, tmp_path, capfd, monkeypatch
):
    """`spectral run` of K = 2 x M = 2; worker 1 of branch 1 exits after epoch 1's committed checkpoint: Ray Train
    restarts that group only, from there. (Ray Train's checkpoints on S3: the baseline's test in tests/test_ddp.py,
    the same engine.)"""
    epochs, batch = 2, 32
    cfg = tiny_config(
        str(tmp_path / "run"),
        **{
            "split.rows": 1,
            "split.cols": 2,  # K = 2
            "source.limit": 200,
            "train.epochs": epochs,
            "train.batch_size": batch,
            "resources.workers_per_branch": 2,
            "resources.cpus_per_branch": 0.5,  # 2 branches x 2 workers on the session's 2 CPUs
        },
    )
    storage = RunStorage.from_config(cfg.storage)
    config_file = tmp_path / "kxm.yaml"
    config_file.write_text(config_yaml(cfg))
    monkeypatch.setenv("COLUMNS", "250")  # rich: the plan's log line on one line
    with Exit(storage.child(layout.branch_dir(1)).uri, epoch=1, branch=1) as killed:
        assert main(["run", "--config", str(config_file)]) == 0  # split, train, evaluate: the user's command
    assert [m["k"] for m in killed.markers()] == [1]  # rank 1 of branch 1 did exit
    printed, logged = capfd.readouterr()
    assert "placement plan: 2 branches x 2 workers x (CPU only, 0.5 CPU): 2 at once, 1 wave(s)" in logged, logged
    assert "trained 2 branch(es)" in printed and storage.exists(layout.report("report.json"))
    manifest = load_manifest(storage)
    assert manifest.K == 2
    for k in range(2):
        result = storage.read_json(layout.result(k))
        assert set(result) >= RESULT_KEYS and result["k"] == k and result["workers"] == 2
        assert result["process_group"] == {"backend": "gloo", "world_size": 2, "ranks": [0, 1], "branch": k}
        rows = manifest.branches[k].splits["train"].rows
        steps = epochs * len(global_batches(rows, batch, 2, torch.Generator()))
        assert result["steps"] == steps
        assert result["resumed_from_epoch"] == (1 if k == 1 else 0)  # the restarted group resumed from epoch 1
        # measured by the comm hook on each worker: every step all-reduces every fp32 gradient, within branch k
        assert result["allreduce_bytes_by_worker"] == [steps * result["params"] * 4] * 2
        assert result["allreduce_bytes_per_worker"] == steps * result["params"] * 4
        isolation = storage.read_json(layout.placement(k))["isolation"]
        assert isolation["bytes_sent_to_other_branches"] == 0 and isolation["files_written_for_other_branches"] == []
        assert isolation["allreduce_bytes_within_branch"] == 2 * steps * result["params"] * 4
        assert [m["branch"] for m in isolation["group"]["members"]] == [k, k]
        assert len({m["pid"] for m in isolation["group"]["members"]}) == 2  # two processes
        shards = [f for f in isolation["files_read"] if f.startswith(f"{layout.DATA}/") and f != layout.MANIFEST]
        assert shards and all(f"/branch={k}/" in f for f in shards)  # only its own shards
        # a one-process branch's files: metrics, checkpoints (loadable as theirs), logits in row order
        assert [m["epoch"] for m in layout.read_metrics(storage, k)] == [1, 2]
        assert storage.ls(layout.checkpoints_dir(k)) == ["epoch=1.pt", "epoch=2.pt"]
        assert load_checkpoint(storage, layout.checkpoint(k, 2))["epoch"] == 2
        ray_train = f"{layout.branch_dir(k)}/ray_train"
        reported = [name for name in storage.ls(ray_train) if name.startswith("checkpoint_20")]
        assert reported and all(storage.ls(f"{ray_train}/{name}") == ["epoch.json"] for name in reported)  # a marker
        for split in ("val", "test"):
            logits = np.load(io.BytesIO(storage.read_bytes(layout.logits(k, split))))
            row_ids = np.load(io.BytesIO(storage.read_bytes(layout.rows(k, split))))
            assert logits.shape == (manifest.branches[k].splits[split].rows, 4) and logits.dtype == np.float32
            assert np.all(np.diff(row_ids[:, 0]) > 0)  # ascending idx, as the ensemble expects
    first_val_acc = {k: storage.read_json(layout.result(k))["val_acc"] for k in range(2)}
    # a later run (as after a dead driver, or with more epochs) resumes each group from its newest checkpoint
    longer = cfg.replace(**{"train.epochs": epochs + 1})
    again = api.train(longer)
    assert [again.results[k]["resumed_from_epoch"] for k in range(2)] == [epochs, epochs]
    for k in range(2):
        assert [m["epoch"] for m in layout.read_metrics(storage, k)] == [1, 2, 3]
        lrs = [m["lr"] for m in layout.read_metrics(storage, k)]
        assert lrs[2] == pytest.approx(cfg.train.lr * lr_factor(longer.train, 2))  # the longer run's schedule
        steps = (epochs + 1) * len(
            global_batches(manifest.branches[k].splits["train"].rows, batch, 2, torch.Generator())
        )
        assert again.results[k]["allreduce_bytes_per_worker"] == steps * again.results[k]["params"] * 4
    # shortened back (the newest checkpoint is of epoch 3): each group finishes from its epoch-2 file, as a
    # one-process branch does, and trains nothing (it failed with "no final result reported")
    shorter = api.train(cfg)
    for k in range(2):
        result = shorter.results[k]
        assert result["resumed_from_epoch"] == epochs and result["epochs"] == epochs
        assert storage.ls(layout.checkpoints_dir(k)) == ["epoch=1.pt", "epoch=2.pt"]  # epoch 3's file removed
        assert [m["epoch"] for m in layout.read_metrics(storage, k)] == [1, 2]
        assert result["val_acc"] == first_val_acc[k]  # the epoch-2 model of the first run
    chosen = api.ensemble(cfg)
    assert chosen.method == "uniform" and list(chosen.weights) == [0.5, 0.5] and 0 <= chosen.test["acc"] <= 1
    assert storage.exists(layout.WEIGHTS)
