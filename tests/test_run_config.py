"""A run keeps its configuration (``orchestrator.run_config``): ``<run>/config.yaml``, resume, conflicts."""

from __future__ import annotations

import shutil

import pytest
import yaml

from conftest import tiny_config
from data_split import RunStorage
from data_split.errors import ConfigError
from orchestrator.config import from_dict
from orchestrator.run_config import config_yaml, keep_config, resume_config


def test_the_kept_config_has_every_key_no_secret_and_loads_back(tmp_path):
    cfg = tiny_config(
        str(tmp_path / "run"),
        **{"storage.access_key_id": "AKIDKEEPOUT", "storage.secret_access_key": "s3cr3t-never-written"},
    )
    keep_config(cfg)
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert "AKIDKEEPOUT" not in text and "s3cr3t-never-written" not in text
    assert text.startswith("# The configuration this run ran with last")
    back = from_dict(yaml.safe_load(text))
    assert back == cfg.replace(**{"storage.access_key_id": None, "storage.secret_access_key": None})
    assert config_yaml(back) == config_yaml(cfg)  # every key is there: nothing fell back to a default


def test_resume_takes_the_stored_config_and_refuses_a_split_change(tmp_path):
    uri = str(tmp_path / "run")
    keep_config(tiny_config(uri, **{"train.epochs": 2}))
    cfg = resume_config(uri, {"train.epochs": 5, "storage.uri": uri})
    assert cfg.train.epochs == 5 and cfg.source.name == "synthetic" and cfg.split.rows == 2  # not the defaults
    assert resume_config(uri, {"split.rows": 2}).split.rows == 2  # the stored value again: no conflict
    with pytest.raises(ConfigError, match=r"--set split\.rows=4 \(stored: 2\) conflicts with the split stored at"):
        resume_config(uri, {"split.rows": 4, "train.epochs": 5})
    with pytest.raises(ConfigError, match="source.limit"):
        resume_config(uri, {"source.limit": 10})
    assert resume_config(uri, {"split.rows": 4}, allow_split_change=True).split.rows == 4  # --overwrite
    with pytest.raises(ConfigError, match="nothing to resume"):
        resume_config(str(tmp_path / "elsewhere"), {})


@pytest.mark.slow
def test_resume_and_run_without_config_continue_a_finished_job(finished_job, tmp_path, capfd, monkeypatch):
    from orchestrator.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    cfg, _ = finished_job
    kept = yaml.safe_load(RunStorage(cfg.storage.uri).read_bytes("config.yaml"))
    assert from_dict(kept) == cfg  # api.run kept every key it ran with
    copy = str(tmp_path / "copy")
    shutil.copytree(cfg.storage.uri, copy)
    capfd.readouterr()

    assert main(["resume", "--storage", copy, "--set", "ensemble.weights=uniform"]) == 0
    out, err = capfd.readouterr()
    assert "up to date" in out and "skipped 4 finished" in out and "(uniform)" in out and "error" not in err
    assert "continuing with" in err and "config.yaml" in err  # a log line: stderr
    stored = yaml.safe_load(RunStorage(copy).read_bytes("config.yaml"))
    assert stored["ensemble"]["weights"] == "uniform" and stored["storage"]["uri"] == copy
    assert RunStorage(copy).read_json("ensemble/weights.json")["method"] == "uniform"

    # `run --storage` alone on an existing run: its own config, not the embedded Fashion-MNIST default
    assert main(["run", "--storage", copy, "--set", "ensemble.weights=geometric"]) == 0
    assert RunStorage(copy).read_json("ensemble/weights.json")["method"] == "geometric"
    capfd.readouterr()

    assert main(["resume", "--storage", copy, "--set", "split.transform=haar"]) == 1
    out, err = capfd.readouterr()
    assert "error: ConfigError: --set split.transform=haar (stored: dct) conflicts" in err and out == ""
