"""Hyperparameter sweeps: the search-space config, ranking, trial storage, ASHA, s3://, and resuming a killed driver."""

from __future__ import annotations

import glob
import json
import os
import pickle
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config, wait_until
from data_split.storage import RunStorage
from holds import REACHED_TIMEOUT_S, Hold
from orchestrator import api, cli
from orchestrator.config import ConfigError, load_config
from orchestrator.sweep import check_space_values, run_sweep
from tune import SweepError
from tune._sweep_trial import TrialStorage
from tune.sweep import rank_rows

SPECTRAL = str(Path(sys.executable).with_name("spectral"))
LR_SPACE = {"train.lr": {"loguniform": [1.0e-5, 1.0e-1]}}


# -- config: the search space ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "space, message",
    [
        ({"train.lrr": {"uniform": [0.1, 0.2]}}, r"sweep\.space\.train\.lrr: 'train\.lrr' is not searchable"),
        ({"split.rows": {"choice": [1, 2]}}, r"sweep\.space\.split\.rows: 'split\.rows' is not searchable"),
        ({"model.name": {"choice": ["fc4"]}}, r"sweep\.space\.model\.name: 'model\.name' is not searchable"),
        ({"train.batch_size": {"loguniform": [8, 64]}}, r"train\.batch_size takes int values.*use choice or randint"),
        ({"train.lr": {"loguniform": [0.0, 0.1]}}, r"sweep\.space\.train\.lr: loguniform needs low > 0"),
        ({"train.lr": {"uniform": [0.1, 0.01]}}, r"low < high"),
        ({"train.lr": {"normal": [0, 1]}}, r"unknown distribution 'normal'"),
        ({"train.lr": {"choice": []}}, r"choice expects a non-empty list"),
        ({"train.lr": {"uniform": [0.1, 0.2], "choice": [0.1]}}, r"expected one distribution"),
    ],
)
def test_bad_search_spaces_are_config_errors_naming_the_key(space, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, {"sweep.space": space})


def test_search_space_loads_from_yaml(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "sweep": {
                    "space": {
                        "train.lr": {"loguniform": [1e-4, 1e-2]},
                        "train.batch_size": {"choice": [64, 128]},
                        "model.width": {"randint": [32, 64]},
                        "train.weight_decay": {"uniform": [0.0, 1e-3]},
                    },
                    "num_samples": 3,
                }
            },
            sort_keys=False,
        )
    )
    cfg = load_config(path)
    assert [(d.key, d.kind) for d in cfg.sweep.dimensions] == [
        ("train.lr", "loguniform"),
        ("train.batch_size", "choice"),
        ("model.width", "randint"),
        ("train.weight_decay", "uniform"),
    ]
    assert cfg.sweep.resolved_mode == "max" and cfg.sweep.branches == [0]
    with pytest.raises(ConfigError, match="sweep.metric"):
        load_config(None, {"sweep.metric": "test_acc"})


def test_empty_space_and_invalid_values_fail_before_any_training(tmp_path):
    cfg = tiny_config(str(tmp_path / "run"))
    with pytest.raises(SweepError, match="sweep.space is empty"):
        run_sweep(cfg)
    assert not (tmp_path / "run").exists()  # nothing was split or written
    bad = tiny_config(str(tmp_path / "run"), **{"sweep.space": {"train.batch_size": {"choice": [0, 64]}}})
    with pytest.raises(SweepError, match=r"sweep\.space\.train\.batch_size: value 0 gives an invalid config"):
        check_space_values(bad, bad.sweep.dimensions)


# -- pure pieces ----------------------------------------------------------------------------------------------
def test_ranking_prefers_the_best_finished_trial():
    rows = [
        {"trial": "a", "val_acc": 0.9, "status": "stopped early"},
        {"trial": "b", "val_acc": 0.8, "status": "finished"},
        {"trial": "c", "val_acc": None, "status": "error", "error": "boom"},
        {"trial": "d", "val_acc": 0.7, "status": "finished"},
    ]
    ranked, best = rank_rows(rows, "val_acc", "max")
    assert [r["trial"] for r in ranked] == ["a", "b", "d", "c"] and best["trial"] == "b"
    ranked, best = rank_rows(rows, "val_acc", "min")
    assert [r["trial"] for r in ranked] == ["d", "b", "a", "c"] and best["trial"] == "d"
    with pytest.raises(SweepError, match="first error: boom"):
        rank_rows([rows[2]], "val_acc", "max")
    tied = [{"trial": "f", "val_acc": 0.8, "status": "finished"}, {"trial": "e", "val_acc": 0.8, "status": "finished"}]
    assert rank_rows(tied, "val_acc", "max")[1]["trial"] == rank_rows(tied[::-1], "val_acc", "max")[1]["trial"] == "e"


def test_trial_storage_reads_the_runs_data_and_writes_its_own_branches(tmp_path):
    run = RunStorage(str(tmp_path / "run"))
    run.write_json("data/manifest.json", {"hello": 1})
    trial = pickle.loads(pickle.dumps(TrialStorage.of(run, "t1")))  # as a Tune actor receives it
    assert trial.read_json("data/manifest.json") == {"hello": 1}
    trial.write_json("branches/0/result.json", {"ok": True})
    assert (tmp_path / "run/tune/sweep/trials/t1/branches/0/result.json").exists()
    assert not (tmp_path / "run/branches").exists()
    with pytest.raises(PermissionError):
        trial.write_json("data/manifest.json", {})


# -- sweeps against a real Ray ---------------------------------------------------------------------------------
def sweep_config(uri: str, **extra):
    return tiny_config(
        uri,
        **{
            "split.rows": 1,
            "train.epochs": 4,  # K = 2: the best config's run is one wave
            "sweep.space": {**LR_SPACE, "train.batch_size": {"choice": [32, 64]}},
            "sweep.num_samples": 6,
            "sweep.reduction_factor": 3.0,
            **extra,
        },
    )


@pytest.mark.slow
def test_asha_sweep_writes_table_and_a_best_config_that_runs(ray_session, tmp_path):
    cfg = sweep_config(str(tmp_path / "run"))
    result = api.sweep(cfg)
    storage = RunStorage.from_config(cfg.storage)
    assert len(result.rows) == 6 and not result.restored
    assert all(r["status"] in ("finished", "stopped early") for r in result.rows)
    early = [r for r in result.rows if r["status"] == "stopped early"]
    assert early and result.stopped_early == len(early)  # ASHA cut some trials short
    assert all(r["epochs_run"] < r["epochs"] for r in early)
    assert result.best["status"] == "finished" and result.best["epochs_run"] == 4
    assert result.best["val_acc"] == max(r["val_acc"] for r in result.rows if r["status"] == "finished")
    # trial outputs under tune/sweep/trials/<id>/, none in the run's branches/
    assert not storage.exists("branches")
    for r in result.rows:
        metrics = storage.read_bytes(f"tune/sweep/trials/{r['trial']}/branches/0/metrics.jsonl").decode().splitlines()
        assert [json.loads(m)["epoch"] for m in metrics] == list(range(1, r["epochs_run"] + 1))
    md = storage.read_bytes("tune/sweep.md").decode()
    assert "| # | trial | train.lr | train.batch_size |" in md and result.best["trial"] in md
    best = load_config(str(tmp_path / "run/tune/best_config.yaml"))
    assert best == result.best_config
    assert best.train.lr == result.best["overrides"]["train.lr"]
    assert best.train.batch_size == result.best["overrides"]["train.batch_size"]
    assert best.sweep == cfg.sweep and best.split == cfg.split
    # the best config runs as it is (on a fresh run URI)
    fresh = str(tmp_path / "fresh")
    assert cli.main(["run", "--config", str(tmp_path / "run/tune/best_config.yaml"), "--storage", fresh]) == 0
    assert RunStorage(fresh).read_json("branches/0/result.json")["train_config"]["lr"] == best.train.lr
    # the same sweep again resumes (nothing left to do); a different one on this run is refused
    again = api.sweep(cfg)
    assert again.restored and again.best["trial"] == result.best["trial"]
    with pytest.raises(SweepError, match="holds a different sweep.*--overwrite"):
        api.sweep(cfg.replace(**{"sweep.num_samples": 7}))


@pytest.mark.slow
def test_sweep_of_two_branches_on_s3(ray_session, s3_endpoint):
    uri = f"s3://test-bucket/{uuid.uuid4().hex}"
    cfg = tiny_config(
        uri,
        **{
            "storage.endpoint_url": s3_endpoint,
            "train.epochs": 2,
            "sweep.space": LR_SPACE,
            "sweep.num_samples": 2,
            "sweep.branches": [0, 1],
            "sweep.scheduler": "fifo",
        },
    )
    result = api.sweep(cfg)
    storage = RunStorage.from_config(cfg.storage)
    assert [r["status"] for r in result.rows] == ["finished", "finished"]
    assert result.experiment.startswith(uri)
    assert any(n.startswith("experiment_state") for n in storage.ls("tune/sweep/experiment"))
    for r in result.rows:
        for k in (0, 1):
            assert storage.exists(f"tune/sweep/trials/{r['trial']}/branches/{k}/result.json")
        progress = storage.read_bytes(f"tune/sweep/experiment/trial_{r['trial']}/result.json").decode().splitlines()
        last = json.loads(progress[-1])
        assert last["epoch"] == 2 and last["val_acc"] == pytest.approx((last["val_acc_b0"] + last["val_acc_b1"]) / 2)
    assert storage.exists("tune/sweep.md") and storage.exists("tune/best_config.yaml")
    # what the CLI prints to run next: `spectral run --config s3://.../tune/best_config.yaml` reads it from S3
    assert result.best_config_path == f"{uri}/tune/best_config.yaml"
    assert load_config(result.best_config_path, {"storage.endpoint_url": s3_endpoint}) == result.best_config


def tune_state_shows(run: Path, trial_id: str, epoch: int) -> bool:
    """Whether Tune's newest saved experiment state holds ``trial_id`` running with ``epoch`` reported."""
    states = sorted(glob.glob(str(run / "tune/sweep/experiment/experiment_state-*.json")))
    if not states:
        return False
    try:
        trials = json.loads(Path(states[-1]).read_text())["trial_data"]
    except (OSError, ValueError):  # being rewritten right now
        return False
    for state, runtime in trials:
        trial, meta = json.loads(state), json.loads(runtime)
        if trial["trial_id"] == trial_id and (meta.get("last_result") or {}).get("epoch", 0) >= epoch:
            return True
    return False


@pytest.mark.slow
def test_sweep_resumes_after_its_driver_is_killed(ray_address, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(
        str(run),
        **{
            "split.rows": 1,
            "train.epochs": 4,
            "sweep.space": LR_SPACE,
            "sweep.num_samples": 2,
            "sweep.scheduler": "fifo",
        },
    )
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    cmd = [SPECTRAL, "sweep", "--config", str(config)]
    # Tune saves its experiment state every TUNE_GLOBAL_CHECKPOINT_S (default >= 10 s): 1 s here, so that
    # the state showing the held trial's epoch 2 is written soon.
    # Both drivers join the session's Ray: the kill takes the driver (and with it its trials), not a cluster.
    env = {**os.environ, "RAY_ADDRESS": ray_address, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    log1 = open(tmp_path / "first.log", "w")
    hold = Hold(str(run), epoch=2, branch=0)  # every trial's branch 0 waits after its epoch-2 checkpoint
    first = subprocess.Popen(cmd, stdout=log1, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        alive = lambda: first.poll() is None  # noqa: E731
        held = hold.wait_reached(1, alive=alive)
        caught = held[0]["uri"].rsplit("/", 1)[1]
        # the trial is held: this state must come (a generous deadline for a loaded machine; it ends once it is there)
        wait_until(
            lambda: tune_state_shows(run, caught, 2),
            timeout_s=REACHED_TIMEOUT_S,
            alive=alive,
            what="Tune's saved state showed the held trial's epoch 2",
            poll_s=0.1,
            detail=lambda: (tmp_path / "first.log").read_text()[-3000:],
        )
    finally:
        first.send_signal(signal.SIGKILL)  # the driver dies mid-sweep, at a known epoch (or the test failed)
        first.wait()
        for marker in hold.markers():  # and the held trial processes, before they are let go
            try:
                os.kill(marker["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
        hold.release()
        log1.close()
    trials_before = {p.name for p in (run / "tune/sweep/trials").iterdir()}
    held_trials = {m["uri"].rsplit("/", 1)[1] for m in hold.markers()}

    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming the interrupted sweep" in second.stderr  # a log line: stderr
    for chatter in ("Configuration for experiment", "View detailed results here", "tensorboard --logdir"):
        assert chatter not in second.stdout + second.stderr  # Tune's own output: only with -v
    summary = json.loads((run / "tune/sweep.json").read_text())
    assert summary["restored"] is True
    assert len(summary["trials"]) == 2 and all(t["status"] == "finished" for t in summary["trials"])
    assert caught in trials_before <= {t["trial"] for t in summary["trials"]}  # resumed, not replaced
    for trial in held_trials:  # each interrupted trial went on from its epoch-2 checkpoint
        branch = json.loads((run / f"tune/sweep/trials/{trial}/branches/0/result.json").read_text())
        assert branch["resumed_from_epoch"] == 2
        metrics = (run / f"tune/sweep/trials/{trial}/branches/0/metrics.jsonl").read_text().splitlines()
        assert [json.loads(m)["epoch"] for m in metrics] == [1, 2, 3, 4]
    for t in summary["trials"]:  # no epoch went missing for Tune across the kill
        lines = (run / f"tune/sweep/experiment/trial_{t['trial']}/result.json").read_text().splitlines()
        assert {json.loads(line)["epoch"] for line in lines} == {1, 2, 3, 4}
    assert (run / "tune/best_config.yaml").exists()
