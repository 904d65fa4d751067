"""Real branch actors on fake GPUs: ``ray.init(num_gpus=1)`` on a machine without one.

Ray hands each actor a GPU id (and ``CUDA_VISIBLE_DEVICES``) from the logical GPUs it was told about;
torch still finds no CUDA device and trains on the CPU. That is enough to check the placement plan
end to end: with ``gpus_per_branch: 0.5``, K=4 branches share GPU 0 two at a time (two are paused
together by a test hold; their recorded training intervals never overlap three deep), and the launcher
logs and returns where each one ran.

The cluster is a separate ``ray.init`` in a subprocess: the session's shared ``ray_session`` (no GPUs)
may already be initialised in this process.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

DRIVER = textwrap.dedent(
    """
    import json, logging, sys, time
    sys.path.insert(0, {tests!r})
    from conftest import tiny_config  # also sets the test environment (fake AWS keys, no auth, no usage stats)
    from holds import REACHED_TIMEOUT_S, Hold

    import ray
    from ray.data import DataContext
    from data_split import RunStorage, split_dataset
    from orchestrator.config import ResourcesConfig
    from orchestrator.launcher import train_branches

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024**2)
    DataContext.get_current().enable_progress_bars = False
    cfg = tiny_config({uri!r})
    storage = RunStorage(cfg.storage.uri)
    split_dataset(cfg.source, cfg.split, storage)

    # Every branch pauses after epoch 1 until two of them are paused at once: proof that two ran together.
    hold, together = Hold(cfg.storage.uri, epoch=1), []
    deadline = time.monotonic() + REACHED_TIMEOUT_S
    def on_progress(snapshot):
        if not together and (len(reached := hold.markers()) >= 2 or time.monotonic() > deadline):
            together.extend(reached)
            hold.release()

    resources = ResourcesConfig(gpus_per_branch=0.5, cpus_per_branch=1, max_restarts=0)
    outcome = train_branches(storage, 4, cfg.model, cfg.train, resources, on_progress=on_progress)
    hold.release()
    print(json.dumps({{
        "plan": vars(outcome.plan),
        "results": {{k: {{"placement": r["placement"], "device": r["device"]}} for k, r in outcome.results.items()}},
        "held_together": together,
    }}))
    """
)


@pytest.mark.slow
def test_half_gpu_branches_share_gpu_0_two_at_a_time(tmp_path):
    code = DRIVER.format(tests=str(TESTS), uri=str(tmp_path / "run"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    # The plan: 0.5 GPU each on one GPU -> 2 at once, 2 waves (documented in orchestrator/placement.py).
    assert out["plan"] == {
        "branches": 4,
        "gpus_per_branch": 0.5,
        "cpus_per_branch": 1.0,
        "concurrent": 2,
        "waves": 2,
        "packs": None,  # unpacked: one branch per task
        "workers": 1,  # one process per branch (resources.workers_per_branch: 1)
    }
    assert "placement plan: 4 branches x (0.5 GPU, 1 CPU): 2 at once, 2 wave(s)" in proc.stderr

    results = {int(k): r for k, r in out["results"].items()}
    assert sorted(results) == [0, 1, 2, 3]
    for k, r in results.items():
        assert r["placement"]["gpu_ids"] == ["0"], (k, r)
        assert r["device"] == "cpu"  # a logical GPU only: torch found no CUDA device
        # The launcher printed where the branch landed, GPU included.
        assert re.search(rf"branch {k} on node \S+ \(\w+, pid {r['placement']['pid']}\), GPU 0\b", proc.stderr), k
    # a process that held a GPU trains no other branch (max_calls=1): a CPU worker would be reused for wave 2
    assert len({r["placement"]["pid"] for r in results.values()}) == 4
    # Two half-GPU branches ran together: both were paused after epoch 1 at the same time ...
    assert len(out["held_together"]) == 2, out["held_together"]
    # ... and Ray never ran more than two on the single GPU: at most two training intervals overlap.
    assert max_overlap([(r["placement"]["started_at"], r["placement"]["finished_at"]) for r in results.values()]) == 2


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) intervals that hold one instant in common."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])  # ends sort first
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_max_overlap_counts_intervals_sharing_an_instant():
    assert max_overlap([(0, 2), (1, 3), (2, 4), (3, 5)]) == 2  # touching ends do not overlap
    assert max_overlap([(0, 4), (1, 3), (2, 5)]) == 3
    assert max_overlap([(0, 1), (1, 2)]) == 1
