"""`ray job submit --working-dir . -- spectral run ...` against a real local cluster (`ray start --head`)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import free_port
from data_split import RunStorage
from ray_cluster import BIN, node_ports, ray_env, ray_start, stop_ray_processes

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_head():
    """A one-node cluster with the dashboard (job submission), shared by this module's jobs; stopped by killing
    only its own processes."""
    temp_dir = tempfile.mkdtemp(prefix="stn-jobs-", dir="/tmp")  # short: Ray's unix sockets live under it

    def head():
        dashboard = free_port()
        return [str(BIN / "ray"), "start", "--head", "--num-cpus=2", f"--port={free_port()}",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--disable-usage-stats",
                f"--temp-dir={temp_dir}", *node_ports()], dashboard

    try:
        dashboard = ray_start(head, temp_dir, ray_env())
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        stop_ray_processes([temp_dir])
        shutil.rmtree(temp_dir, ignore_errors=True)


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
    proc = subprocess.run(submit, env=ray_env(), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout
    storage = RunStorage(str(run_uri))
    report = storage.read_json("report/report.json")
    assert len(report["branches"]) == 4
    assert storage.read_json("ensemble/weights.json")["method"] == "geometric"


def test_job_submission_runs_the_ddp_baseline(ray_head, tmp_path):
    """`spectral baseline --set baseline.engine=ddp --set baseline.workers=2` as a job: the CLI, `api.baseline` and
    Ray Train inside the job (the kill/resume and S3 checks are in tests/test_ddp.py)."""
    run_uri = tmp_path / "run"
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "source": {"name": "synthetic", "synthetic": {"train": 200, "test": 50, "height": 8, "width": 8, "classes": 4}},
        "model": {"name": "fc4"},
        "train": {"epochs": 1, "batch_size": 32},
    }))
    submit = [str(BIN / "ray"), "job", "submit", "--address", ray_head, "--working-dir", str(REPO), "--",
              "spectral", "baseline", "--config", str(config), "--storage", str(run_uri),
              "--set", "baseline.engine=ddp", "--set", "baseline.workers=2"]
    proc = subprocess.run(submit, env=ray_env(), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Ray Train DDP, 2 workers, gloo" in proc.stdout  # the CLI's summary line
    result = RunStorage(str(run_uri)).read_json("baseline-ddp/result.json")
    assert result["workers"] == 2 and result["backend"] == "gloo"
    assert result["allreduce_bytes_per_worker"] == result["steps"] * result["parameters"] * 4
