"""`ray job submit --working-dir . -- spectral run ...` against a real local cluster (`ray start --head`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import free_port
from data_split import RunStorage

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env() -> dict:
    # Token auth is on by default for local clusters (Ray >= 2.59): disable it for both sides.
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture
def ray_head(tmp_path):
    port, dashboard = free_port(), free_port()
    temp_dir = tmp_path / "ray"
    cmd = [str(BIN / "ray"), "start", "--head", "--num-cpus=2", f"--port={port}", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dashboard}", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    subprocess.run(cmd, check=True, env=_env(), capture_output=True, timeout=120)
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=_env(), capture_output=True, timeout=120)


def test_job_submission_runs_the_whole_job(ray_head, tmp_path):
    run_uri = tmp_path / "run"
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "source": {"name": "synthetic", "synthetic": {"train": 300, "test": 100, "height": 8, "width": 8, "classes": 4}},
        "split": {"rows": 2, "cols": 2},
        "model": {"name": "fc4"},
        "train": {"epochs": 1},
        "ensemble": {"weights": "geometric"},
    }))
    submit = [str(BIN / "ray"), "job", "submit", "--address", ray_head, "--working-dir", str(REPO), "--",
              "spectral", "run", "--config", str(config), "--storage", str(run_uri)]
    proc = subprocess.run(submit, env=_env(), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout
    storage = RunStorage(str(run_uri))
    report = storage.read_json("report/report.json")
    assert len(report["branches"]) == 4
    assert storage.read_json("ensemble/weights.json")["method"] == "geometric"
