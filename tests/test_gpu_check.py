"""benchmarks/gpu_check.sh --cpu-smoke: the GPU check's whole path in seconds on a CPU (one logical GPU).

The smoke trains one model (cnn8; every model takes the same path, and each costs ~10 s of actor starts
here); what the GPU run does between its two models, reusing the first one's split, is tested on its own.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_writes_every_number(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}  # the JSON goes to $OUT/gpu_check.json
    proc = subprocess.run(
        [str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu-smoke", "--models", "cnn8"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    results = record["results"]  # benchmarks/_common.record's schema: the run's metadata around the numbers

    assert results["mode"] == "cpu-smoke" and results["epochs"] == 1 and results["split"]["K"] == 4
    assert record["machine"]["ray"].startswith("2.60") and "benchmarks.gpu_check --cpu-smoke" in record["command"]
    assert record["benchmark"] == "gpu_check" and len(record["load_average"]["after"]) == 3
    assert set(results["models"]) == {"cnn8"}
    for r in results["models"].values():
        base, spectral = r["baseline"], r["spectral_sub4"]
        assert base["gpus"] == 1.0 and base["gpu_ids"] == ["0"]
        assert base["in_shape"] == [1, 28, 28]
        assert spectral["gpus_per_branch"] == 0.25
        assert [b["k"] for b in spectral["branches"]] == [0, 1, 2, 3]
        for b in spectral["branches"]:
            assert b["gpu_ids"] == ["0"], b  # four quarter-GPU actors on the one (logical) GPU
            assert b["in_shape"] == [1, 14, 14]
            assert b["images_per_s"] > 0 and b["peak_gpu_memory_bytes"] > 0 and 0 <= b["test_acc"] <= 1
            assert b["peak_memory_kind"] == "process_max_rss"  # no CUDA here: torch trained on the CPU
        assert spectral["source_images_per_s"] > 0 and base["images_per_s"] > 0
        assert spectral["branch_vs_baseline_peak_memory"] > 0
        assert set(spectral["ensembles"]) >= {"uniform", "geometric"} and spectral["chosen_ensemble"] == "geometric"
        assert 0 <= spectral["ensemble_test_acc"] <= 1 and 0 <= base["test_acc"] <= 1
    # the fixed-width table, one baseline row per model
    assert proc.stdout.count("baseline, 1 GPU") == 1


def test_the_next_model_reuses_the_first_models_split(tiny_split, tmp_path):
    """Between models the GPU run copies the written split (``copy_split``): the next model's split is then
    up to date, and nothing is written again."""
    from benchmarks.gpu_check import copy_split
    from data_split import RunStorage, split_dataset

    cfg, storage = tiny_split
    second = tmp_path / "second"
    copy_split(Path(storage.root), second)
    result = split_dataset(cfg.source, cfg.split, RunStorage(str(second)))
    assert result.up_to_date and result.manifest.to_json() == storage.read_json("data/manifest.json")
