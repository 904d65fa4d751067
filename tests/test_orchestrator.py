"""Branch actors against a real local Ray: isolation, re-runs, process kills, failing branches."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal

import pytest

from branches import train_branch
from conftest import tiny_config
from data_split import RunStorage, load_manifest
from holds import Hold
from orchestrator import api
from orchestrator.launcher import BranchFailedError

pytestmark = pytest.mark.slow


def metric_epochs(storage: RunStorage, k: int) -> list[int]:
    lines = storage.read_bytes(f"branches/{k}/metrics.jsonl").decode().splitlines()
    return [json.loads(line)["epoch"] for line in lines]


def assert_no_process_shared_at_once(results: dict[int, dict]) -> None:
    """Branches (or packs: pass one branch of each) that ran in one process (a reused Ray worker) ran one after
    the other, never at once."""
    by_pid: dict[int, list[tuple[float, float]]] = {}
    for r in results.values():
        where = r["placement"]
        by_pid.setdefault(where["pid"], []).append((where["started_at"], where["finished_at"]))
    for pid, spans in by_pid.items():
        spans.sort()
        assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:])), (pid, spans)


def test_run_trains_every_branch_in_isolation(finished_job, tmp_path):
    tiny_cfg, result = finished_job
    storage = RunStorage.from_config(tiny_cfg.storage)
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
        times = [
            json.loads(line)["time"] for line in storage.read_bytes(f"branches/{k}/metrics.jsonl").decode().splitlines()
        ]
        assert res["started"] < times[0] < times[1]  # the launcher's start, then each epoch's end
        for split in ("val", "test"):
            assert storage.exists(f"branches/{k}/logits_{split}.npy")
    assert_no_process_shared_at_once(result.training.results)
    report = storage.read_json("report/report.json")
    assert report == result.report

    # Isolation by denial: each branch trains again where the other branches' shards are gone from storage,
    # and gives the same logits, bit for bit.
    for k in range(4):
        denied = RunStorage(str(tmp_path / f"denied{k}"))
        shutil.copytree(storage.path("data"), tmp_path / f"denied{k}/data")
        for other in (p for p in (tmp_path / f"denied{k}/data").glob("*/branch=*") if p.name != f"branch={k}"):
            shutil.rmtree(other)
        train_branch(denied, k, tiny_cfg.model, tiny_cfg.train)
        assert denied.read_bytes(f"branches/{k}/logits_test.npy") == storage.read_bytes(f"branches/{k}/logits_test.npy")
    assert storage.exists("ensemble/weights.json")
    assert storage.exists("report/report.md")


def test_rerun_skips_finished_branches_and_resumes_unfinished(finished_job, tmp_path):
    done, _ = finished_job
    shutil.copytree(
        RunStorage.from_config(done.storage).path(), tmp_path / "run"
    )  # a copy of the finished job, to break
    tiny_cfg = done.replace(**{"storage.uri": str(tmp_path / "run"), "ensemble.weights": "uniform"})  # no 2nd search
    storage = RunStorage.from_config(tiny_cfg.storage)
    # Branch 2 "crashed" after its first epoch: no result, no epoch-2 checkpoint or metrics line.
    storage.remove("branches/2/result.json")
    storage.remove("branches/2/checkpoints/epoch=2.pt")
    lines = storage.read_bytes("branches/2/metrics.jsonl").decode().splitlines()
    storage.write_text("branches/2/metrics.jsonl", lines[0] + "\n")

    again = api.run(tiny_cfg)
    assert again.split.up_to_date
    assert again.training.skipped == [0, 1, 3]
    assert again.training.results[2]["resumed_from_epoch"] == 1
    assert metric_epochs(storage, 2) == [1, 2]
    assert storage.exists("branches/2/result.json")


def test_a_driver_keeps_one_progress_board_with_a_key_per_training(ray_session):
    import ray

    from orchestrator.branch_task import BoardRef, board_for_this_driver

    board, name = board_for_this_driver()
    again, same = board_for_this_driver()
    assert same == name and ray.get(again.snapshot.remote("none")) == {}
    first, second = BoardRef(name, "first").reporter(), BoardRef(name, "second").reporter()
    first.update(0, {"state": "training", "epoch": 1})
    first.update(0, {"epoch": 2})  # merged into what branch 0 said before
    second.update(0, {"state": "starting"})
    assert ray.get(board.snapshot.remote("first")) == {0: {"state": "training", "epoch": 2}}
    assert ray.get(board.snapshot.remote("second")) == {0: {"state": "starting"}}
    ray.get(board.drop.remote("first"))
    assert ray.get(board.snapshot.remote("first")) == {} and ray.get(board.snapshot.remote("second")) != {}
    ray.get(board.drop.remote("second"))


def test_killed_branch_process_restarts_and_resumes(ray_session, tmp_path):
    cfg = tiny_config(
        str(tmp_path / "run"), **{"split.rows": 1, "split.cols": 2, "train.epochs": 4, "resources.max_restarts": 2}
    )
    api.split(cfg)
    killed: dict = {}
    with Hold(cfg.storage.uri, epoch=2, branch=0) as hold:  # branch 0 waits after epoch 2's checkpoint

        def kill_the_held_branch(snapshot):
            if not killed and (reached := hold.markers()):
                killed.update(reached[0])
                os.kill(killed["pid"], signal.SIGKILL)
                hold.release()

        outcome = api.train(cfg, on_progress=kill_the_held_branch)
    assert killed and killed["k"] == 0 and killed["epoch"] == 2
    storage = RunStorage.from_config(cfg.storage)
    assert outcome.results[0]["placement"]["pid"] != killed["pid"]  # a new process finished it
    assert outcome.results[0]["resumed_from_epoch"] == 2  # from the checkpoint the kill left, not from scratch
    assert metric_epochs(storage, 0) == [1, 2, 3, 4]  # continuous: no epoch lost or repeated
    assert outcome.results[1]["resumed_from_epoch"] == 0

    # The killed branch's outputs equal an uninterrupted training's, bit for bit.
    straight = RunStorage(str(tmp_path / "straight"))
    shutil.copytree(tmp_path / "run/data", tmp_path / "straight/data")
    train_branch(straight, 0, cfg.model, cfg.train)
    for split in ("val", "test"):
        assert storage.read_bytes(f"branches/0/logits_{split}.npy") == straight.read_bytes(
            f"branches/0/logits_{split}.npy"
        )


def test_branch_failing_past_its_limit_fails_the_run_and_keeps_the_others(ray_session, tmp_path):
    cfg = tiny_config(str(tmp_path / "run"), **{"split.rows": 1, "resources.max_restarts": 1})  # K = 2: one wave
    api.split(cfg)
    storage = RunStorage.from_config(cfg.storage)
    bad = load_manifest(storage).branches[1].splits["train"].files[0]
    storage.write_bytes(bad, b"this is not parquet")

    with pytest.raises(BranchFailedError, match=r"branch 1: .*") as err:
        api.train(cfg)
    assert list(err.value.failures) == [1]
    assert storage.exists("branches/0/result.json")  # the other branch finished
    assert not storage.exists("branches/1/result.json")


def test_packed_run_trains_three_branches_in_one_process_and_the_fourth_alone(finished_job, tmp_path):
    """resources.branches_per_process: 3 on the shared job's split (K = 4): a pack of three in one process and a
    pack of one, which trains as a plain branch; each branch's own outputs, isolation records and accuracy
    (SGD, so that the unpacked logits are a tight reference)."""
    import numpy as np

    job_cfg, _ = finished_job
    overrides = {"resources.branches_per_process": 3, "train.epochs": 1, "train.optimizer": "sgd", "train.lr": 0.05}
    cfg = tiny_config(str(tmp_path / "packed"), **overrides)
    alone = RunStorage(str(tmp_path / "alone"))
    for run in (cfg.storage.uri, alone.uri):
        shutil.copytree(RunStorage.from_config(job_cfg.storage).path("data"), f"{run}/data")
    outcome = api.train(cfg)
    storage = RunStorage.from_config(cfg.storage)
    assert outcome.plan.packs == ((0, 1, 2), (3,)) and outcome.plan.branches == 2
    assert len({outcome.results[k]["placement"]["pid"] for k in (0, 1, 2)}) == 1  # one process
    assert_no_process_shared_at_once({k: outcome.results[k] for k in (0, 3)})
    for k, res in sorted(outcome.results.items()):
        packed_with = [0, 1, 2] if k < 3 else None  # branch 3 trained unpacked
        assert (
            res.get("packed_with") == packed_with == storage.read_json(f"branches/{k}/result.json").get("packed_with")
        )
        data_files = [f for f in res["isolation"]["files_read"] if f.startswith("data/") and f.endswith(".parquet")]
        assert data_files and all(
            re.fullmatch(rf"data/(train|val|test)/branch={k}/[^/]+\.parquet", f) for f in data_files
        )
        assert res["isolation"]["bytes_sent_to_other_branches"] == 0
        assert storage.read_json(f"branches/{k}/placement.json")["isolation"] == res["isolation"]
        want = train_branch(alone, k, cfg.model, cfg.train)  # the same branch unpacked, in this process
        assert res["test_acc"] == pytest.approx(want["test_acc"], abs=0.02)
        got_z, want_z = (np.load(io.BytesIO(s.read_bytes(f"branches/{k}/logits_test.npy"))) for s in (storage, alone))
        np.testing.assert_allclose(got_z, want_z, rtol=1e-4, atol=1e-4)
