"""Branch actors against a real local Ray: isolation, re-runs, process kills, failing branches."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest

from conftest import tiny_config
from data_split import RunStorage
from orchestrator import api
from orchestrator.launcher import BranchFailedError

pytestmark = pytest.mark.slow


def metric_epochs(storage: RunStorage, k: int) -> list[int]:
    lines = storage.read_bytes(f"branches/{k}/metrics.jsonl").decode().splitlines()
    return [json.loads(line)["epoch"] for line in lines]


def test_run_trains_every_branch_in_isolation(ray_session, tiny_cfg):
    result = api.run(tiny_cfg)
    storage = api.run_storage(tiny_cfg)
    assert sorted(result.training.results) == [0, 1, 2, 3]
    for k, res in result.training.results.items():
        # No process group, and the only data files a branch opened are its own shards.
        assert res["isolation"]["process_group"] is False
        assert res["isolation"]["bytes_sent_to_other_branches"] == 0
        assert res["isolation"]["files_written_for_other_branches"] == []
        data_files = [f for f in res["isolation"]["files_read"] if f.startswith("data/") and f.endswith(".parquet")]
        assert data_files, f"branch {k} read no shards"
        assert all(re.fullmatch(rf"data/(train|val|test)/branch={k}/[^/]+\.parquet", f) for f in data_files), data_files
        assert res["placement"]["pid"] != os.getpid()
        assert metric_epochs(storage, k) == [1, 2]
        times = [json.loads(line)["time"] for line in storage.read_bytes(f"branches/{k}/metrics.jsonl").decode().splitlines()]
        assert res["started"] < times[0] < times[1]  # the launcher's start, then each epoch's end
        for split in ("val", "test"):
            assert storage.exists(f"branches/{k}/logits_{split}.npy")
    # branches ran as separate actors (separate processes)
    assert len({r["placement"]["pid"] for r in result.training.results.values()}) == 4
    report = storage.read_json("report/report.json")
    assert report == result.report
    assert storage.exists("ensemble/weights.json")
    assert storage.exists("report/report.md")


def test_rerun_skips_finished_branches_and_resumes_unfinished(ray_session, tiny_cfg):
    api.run(tiny_cfg)
    storage = api.run_storage(tiny_cfg)
    # Branch 2 "crashed" after its first epoch: no result, no epoch-2 checkpoint or metrics line.
    storage.remove("branches/2/result.json")
    storage.remove("branches/2/checkpoints/epoch=2.pt")
    lines = storage.read_bytes("branches/2/metrics.jsonl").decode().splitlines()
    storage.write_text("branches/2/metrics.jsonl", lines[0] + "\n")

    again = api.run(tiny_cfg)
    assert again.split.up_to_date
    assert again.training.skipped == [0, 1, 3]
    assert metric_epochs(storage, 2) == [1, 2]
    assert storage.exists("branches/2/result.json")


def test_killed_branch_process_restarts_and_resumes(ray_session, tmp_path):
    # Slow enough (small batches, several epochs) that the kill lands mid-training.
    cfg = tiny_config(
        str(tmp_path / "run"),
        **{"source.synthetic": {"train": 3000, "test": 200, "height": 8, "width": 8, "classes": 4},
           "split.rows": 1, "split.cols": 2, "train.epochs": 6, "train.batch_size": 8,
           "resources.max_restarts": 2},
    )
    api.split(cfg)
    killed: dict[str, int] = {}

    def kill_branch_0_after_epoch_2(snapshot):
        s = snapshot.get(0, {})
        if not killed and s.get("state") == "training" and s.get("epoch", 0) >= 2:
            killed["pid"], killed["epoch"] = s["pid"], s["epoch"]
            os.kill(s["pid"], signal.SIGKILL)

    outcome = api.train(cfg, on_progress=kill_branch_0_after_epoch_2)
    assert killed, "training finished before the kill could land: make it slower"
    assert killed["epoch"] < 6
    storage = api.run_storage(cfg)
    assert metric_epochs(storage, 0) == [1, 2, 3, 4, 5, 6]  # continuous: no epoch lost twice or repeated
    assert outcome.results[0]["placement"]["pid"] != killed["pid"]  # a new process finished it
    assert outcome.results[0]["epochs"] == 6


def test_branch_failing_past_its_limit_fails_the_run_and_keeps_the_others(ray_session, tiny_split):
    cfg, storage = tiny_split
    cfg = cfg.replace(**{"resources.max_restarts": 1})
    manifest = storage.read_json("data/manifest.json")
    bad = manifest["branches"][1]["splits"]["train"]["files"][0]
    storage.write_bytes(bad, b"this is not parquet")

    with pytest.raises(BranchFailedError, match=r"branch 1: .*") as err:
        api.train(cfg)
    assert list(err.value.failures) == [1]
    for k in (0, 2, 3):
        assert storage.exists(f"branches/{k}/result.json")
    assert not storage.exists("branches/1/result.json")
