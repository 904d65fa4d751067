"""`ray job submit --working-dir . -- spectral run ...` against a real local cluster (`ray start`: the session's
two-node cluster, ``conftest.two_node_cluster``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from data_split import RunStorage
from ray_cluster import BIN, ray_env

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_job_submission_runs_the_whole_job_then_the_ddp_baseline(two_node_cluster, tmp_path):
    """One job, two commands (one submission's overhead): `spectral run`, then `spectral baseline --set
    baseline.engine=ddp --set baseline.workers=2` on the same run: the CLI, the API and Ray Train inside a job
    (the DDP kill/resume and S3 checks are in tests/test_ddp.py)."""
    run_uri = tmp_path / "run"
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "source": {"name": "synthetic", "synthetic": {"train": 300, "test": 100, "height": 8, "width": 8, "classes": 4}},
        "split": {"rows": 2, "cols": 2},
        "model": {"name": "fc4"},
        "train": {"epochs": 1, "batch_size": 32},
        "ensemble": {"weights": "geometric"},
    }))
    common = f"--config {config} --storage {run_uri}"
    entrypoint = (f"spectral run {common} && "
                  f"spectral baseline {common} --set baseline.engine=ddp --set baseline.workers=2")
    submit = [str(BIN / "ray"), "job", "submit", "--address", two_node_cluster.dashboard, "--working-dir", str(REPO), "--",
              "sh", "-c", entrypoint]
    proc = subprocess.run(submit, env=ray_env(), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout
    storage = RunStorage(str(run_uri))
    assert storage.read_json("ensemble/weights.json")["method"] == "geometric"
    assert "Ray Train DDP, 2 workers, gloo" in proc.stdout  # the baseline's CLI summary line
    result = storage.read_json("baseline-ddp/result.json")
    assert result["workers"] == 2 and result["backend"] == "gloo"
    assert result["allreduce_bytes_per_worker"] == result["steps"] * result["parameters"] * 4
    report = storage.read_json("report/report.json")  # rebuilt by the baseline: the branches and the DDP engine
    assert len(report["branches"]) == 4 and report["baseline_ddp"]["workers"] == 2
