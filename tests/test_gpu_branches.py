"""benchmarks/gpu_branches.py: the Ray-free GPU check. Its whole path (both splits, the baseline, 4 branches,
the ensemble, the export and the stream) in seconds on a CPU, and the proof that it never imports Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Ray made unimportable (None in sys.modules: `import ray` raises ImportError), then the module and every
# layer its GPU path uses, each training path touched: any `import ray` on the way fails this.
BLOCKED = """
import sys
sys.modules["ray"] = None
import benchmarks.gpu_branches as g
import branches.train, branches._stream, branches.data, branches.models, branches.checkpoint
import data_split.shards, data_split.layout, data_split.parts, data_split.pipeline
import inference.export, inference.model
assert sys.modules["ray"] is None and not [m for m in sys.modules if m.startswith("ray.")]
print("ok")
"""


def test_the_gpu_path_never_imports_ray():
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_cpu_smoke_measures_every_row(tmp_path):
    out = tmp_path / "gpu_branches.json"
    code = (
        "import sys; sys.modules['ray'] = None; from benchmarks.gpu_branches import main; "
        f"main(['--cpu-smoke', '--out', {str(out)!r}])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "gpu_branches" and "--cpu-smoke" in doc["command"] and "torch" in doc["machine"]
    res = doc["results"]
    assert res["device"] == "cpu" and set(res["models"]) == {"cnn8"} and "skipped" in res["packed"]
    row = res["models"]["cnn8"]
    assert row["baseline"]["processes"] == 1 and row["sub4"]["processes"] == 4
    assert row["baseline"]["images_per_s"] > 0 and row["sub4"]["images_per_s"] > 0
    assert 0 <= row["sub4"]["ensemble_test_acc"] <= 1 and len(row["sub4"]["test_acc_each"]) == 4
    assert "error" not in row["export"], row["export"]
    assert row["export"]["matches_ensemble"] and row["export"]["device"] == "cpu"  # the program = the ensemble
    assert row["stream_branch0"]["data_mode"] == "stream"
    from benchmarks.gpu_branches import markdown

    assert markdown(res).count("| cnn8 |") == 3
