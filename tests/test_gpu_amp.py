"""`train.amp` on real CUDA: two half-GPU branch actors train with bf16 autocast on one GPU.

Skipped on a machine without CUDA (the CPU suite cannot see autocast's CUDA path); it runs wherever
torch finds a GPU. Like test_gpu_placement, the cluster is a separate ``ray.init`` in a subprocess
(one that advertises the real GPU), since the session's shared ``ray_session`` has none.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent

DRIVER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    from conftest import tiny_config

    import numpy as np, ray
    from data_split import RunStorage, split_dataset
    from orchestrator.config import ResourcesConfig
    from orchestrator.launcher import train_branches

    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024**2)
    cfg = tiny_config({uri!r}, **{{"split.rows": 1, "train.amp": True, "train.epochs": 3}})
    storage = RunStorage(cfg.storage.uri)
    split_dataset(cfg.source, cfg.split, storage)
    resources = ResourcesConfig(gpus_per_branch=0.5, cpus_per_branch=1, max_restarts=0)
    outcome = train_branches(storage, 2, cfg.model, cfg.train, resources)
    finite = {{k: bool(np.isfinite(np.load(storage.fs.open(storage.path(f"branches/{{k}}/logits_test.npy")))).all())
              for k in outcome.results}}
    keys = ("device", "test_acc", "peak_memory_bytes", "train_config")
    print(json.dumps({{"results": {{k: {{key: r[key] for key in keys}} | {{"gpu_ids": r["placement"]["gpu_ids"]}}
                                  for k, r in outcome.results.items()}},
                      "finite": finite}}))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_amp_trains_half_gpu_branches_on_cuda(tmp_path):
    code = DRIVER.format(tests=str(TESTS), uri=str(tmp_path / "run"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=TESTS.parent)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(out["results"]) == ["0", "1"]
    for k, r in out["results"].items():
        assert r["device"].startswith("cuda"), (k, r)
        assert r["gpu_ids"] == ["0"]  # both halves on the one GPU
        assert r["train_config"]["amp"] is True
        assert r["peak_memory_bytes"] > 0  # torch.cuda.max_memory_allocated: it really ran on the GPU
        assert r["test_acc"] > 0.35  # 4 classes (chance 0.25); CPU fp32 gives ~0.46 here
    assert all(out["finite"].values()), out["finite"]
