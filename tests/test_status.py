"""`spectral status`: a run's state from its storage alone, on a hand-built partial run and a finished job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_config
from data_split import RunStorage, layout
from orchestrator.cli import main
from orchestrator.run_config import keep_config
from orchestrator.status import NoRunError, run_status

REPO = Path(__file__).resolve().parents[1]


def metrics_line(epoch: int, t: float, val_acc: float = 0.5) -> str:
    return json.dumps(
        {
            "epoch": epoch,
            "loss": 1.0 / epoch,
            "val_loss": 1.2,
            "val_acc": val_acc,
            "images_per_s": 1000.0 * epoch,
            "seconds": 0.5,
            "lr": 1e-3,
            "time": t,
        }
    )


@pytest.fixture
def partial_run(tmp_path):
    """A run of K=4 mid-training, written by hand: 0 done, 1 two epochs in, 2 diverged, 3 pending; a live lease."""
    uri = str(tmp_path / "run")
    storage = RunStorage(uri)
    keep_config(tiny_config(uri, **{"train.epochs": 3}))
    now = time.time()
    branches = [
        {
            "k": k,
            "splits": {
                "train": {"rows": 300, "bytes": 1000},
                "val": {"rows": 100, "bytes": 400},
                "test": {"rows": 100, "bytes": 400},
            },
        }
        for k in range(4)
    ]
    storage.write_json(
        layout.MANIFEST,
        {
            "version": 2,
            "source": {"name": "synthetic"},
            "branches": branches,
            "split": {"r": 2, "c": 2, "K": 4, "transform": "dct", "dtype": "uint8"},
            "raw_bytes": {"train": 4800, "val": 1600, "test": 1600},
        },
    )
    storage.write_json(
        layout.LEASE,
        {
            "host": "node-a",
            "pid": 4242,
            "started": now - 100,
            "heartbeat": now - 5,
            "command": "spectral run --config tiny.yaml",
            "token": "t",
        },
    )
    for e in (1, 2, 3):
        storage.append_line(layout.metrics(0), metrics_line(e, now - 60 + e, val_acc=0.7))
    storage.write_json(layout.result(0), {"k": 0, "epochs": 3, "val_acc": 0.75, "test_acc": 0.72})
    storage.write_json(layout.placement(0), {"placement": {"ip": "10.0.0.7", "host": "node-b"}})
    for e in (1, 2):
        storage.append_line(layout.metrics(1), metrics_line(e, now - 10 + e))
    storage.write_json(layout.diverged(2), {"branch": 2, "epoch": 1, "step": 3, "error": "non-finite loss"})
    return storage, now


def test_status_of_a_partial_run(partial_run):
    storage, now = partial_run
    status = run_status(storage, now=now)
    assert status["lease"]["live"] and status["lease"]["holder"] == "spectral run --config tiny.yaml"
    assert status["lease"]["heartbeat_age_s"] == pytest.approx(5, abs=0.5)
    split = status["split"]
    assert (split["K"], split["transform"], split["dtype"], split["bytes"]) == (4, "dct", "uint8", 4 * 1800)
    assert split["rows_per_split"] == {"train": 300, "val": 100, "test": 100}
    assert split["ratio"] == pytest.approx(4 * 1800 / 8000, abs=1e-4)
    by_k = {b["k"]: b for b in status["branches"]}
    assert [by_k[k]["state"] for k in range(4)] == ["done", "training", "diverged", "pending"]
    assert (by_k[0]["epoch"], by_k[0]["epochs"], by_k[0]["val_acc"], by_k[0]["node"]) == (3, 3, 0.75, "10.0.0.7")
    assert (by_k[1]["epoch"], by_k[1]["epochs"], by_k[1]["images_per_s"]) == (2, 3, 2000.0)
    assert by_k[1]["last_update"] == pytest.approx(now - 8)
    assert by_k[2]["error"] == "non-finite loss" and by_k[3]["epoch"] == 0
    assert status["ensembles"] == [] and status["report"] is None

    assert status["baseline"] is None  # not split yet

    later = run_status(storage, now=now + 120)  # no heartbeat for two minutes: the driver is gone
    assert not later["lease"]["live"]
    assert [b["state"] for b in later["branches"]] == ["done", "stopped", "diverged", "pending"]


def test_status_shows_the_baseline_while_it_trains(partial_run, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    storage, now = partial_run
    baseline = storage.child(layout.BASELINE)
    baseline.write_json(layout.MANIFEST, {"version": 2, "branches": [], "split": {"r": 1, "c": 1, "K": 1}})
    assert run_status(storage, now=now)["baseline"]["state"] == "pending"  # split, no epoch yet
    baseline.append_line(layout.metrics(0), metrics_line(1, now - 2, val_acc=0.61))
    status = run_status(storage, now=now)
    assert {k: status["baseline"][k] for k in ("state", "epoch", "epochs", "val_acc")} == {
        "state": "training",
        "epoch": 1,
        "epochs": 3,
        "val_acc": 0.61,
    }
    assert status["baselines"] == []  # no result yet: not among the results
    assert main(["status", "--storage", storage.uri]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "baseline" in line and "training" in line)
    assert "1/3" in row and "0.6100" in row
    assert run_status(storage, now=now + 120)["baseline"]["state"] == "stopped"  # the driver is gone


def test_status_cli_prints_tables_on_stdout_and_json_for_scripts(partial_run, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    storage, _ = partial_run
    assert main(["status", "--storage", storage.uri]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "lease: live, held by 'spectral run --config tiny.yaml' (host node-a, pid 4242)" in out
    assert "split: K=4 (2x2 dct, uint8), synthetic: 300 train, 100 val, 100 test rows per branch" in out
    row1 = next(line for line in out.splitlines() if [c.strip() for c in line.split("│")[1:3]] == ["1", "training"])
    assert "2/3" in row1 and "2,000" in row1
    assert main(["status", "--storage", storage.uri, "--json"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert [b["state"] for b in parsed["branches"]] == ["done", "training", "diverged", "pending"]

    assert main(["status", "--storage", str(Path(storage.uri).parent / "nothing")]) == 1
    out, err = capsys.readouterr()
    assert "error: NoRunError: no run at" in err and out == ""
    with pytest.raises(NoRunError):
        run_status(RunStorage(str(Path(storage.uri).parent / "nothing")))


def test_status_imports_neither_ray_nor_torch(partial_run):
    storage, _ = partial_run
    code = (
        "import sys; from orchestrator.cli import main; code = main(['status', '--storage', sys.argv[1], '--json']); "
        "print('ray' in sys.modules, 'torch' in sys.modules, file=sys.stderr); sys.exit(code)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, storage.uri],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["split"]["K"] == 4
    assert proc.stderr.strip().splitlines()[-1] == "False False"


@pytest.mark.slow
def test_status_of_a_finished_job(finished_job):
    cfg, result = finished_job
    storage = RunStorage.from_config(cfg.storage)
    status = run_status(storage)
    assert status["lease"] is None  # released when the job ended
    assert status["config"] == storage.url("config.yaml")
    assert status["split"]["K"] == cfg.split.k
    for b in status["branches"]:
        stored = storage.read_json(layout.result(b["k"]))
        assert (b["state"], b["epoch"], b["epochs"]) == ("done", cfg.train.epochs, cfg.train.epochs)
        assert b["val_acc"] == stored["val_acc"] and b["node"] is not None  # trained by an actor: placement.json
    methods = {e["method"]: e for e in status["ensembles"]}
    assert set(methods) == {"uniform", "geometric", "tuned", "exact"} and methods["tuned"]["chosen"]
    assert methods["tuned"]["test_acc"] == storage.read_json(layout.WEIGHTS)["test_acc"]
    assert status["report"] == result.paths["report_md"]


def test_watch_json_streams_one_object_per_refresh_until_ctrl_c(partial_run, capsys, monkeypatch):
    import orchestrator.status_cli as status_cli

    storage, _ = partial_run
    naps = []

    def sleep(seconds):  # the third refresh is interrupted: Ctrl-C
        naps.append(seconds)
        if len(naps) == 3:
            raise KeyboardInterrupt
        storage.append_line(layout.metrics(1), metrics_line(2 + len(naps), time.time()))  # the run moves on

    monkeypatch.setattr(status_cli.time, "sleep", sleep)
    assert main(["status", "--storage", storage.uri, "--json", "--watch", "0.5"]) == 130
    out, _ = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert naps == [0.5, 0.5, 0.5] and len(lines) == 3
    assert [next(b["epoch"] for b in s["branches"] if b["k"] == 1) for s in lines] == [2, 3, 4]
