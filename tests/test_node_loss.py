"""Node loss: the second node of the session's two-node cluster dies (all of its Ray processes, SIGKILL)
mid-training. This test is the cluster's last user (``breaks_shared_cluster``): the cluster is stopped after it.

Every branch stops after its epoch-1 checkpoint is on S3 (``tests/holds.Hold``), so the kill lands at
a known point: the two branches on the second node have exactly one complete epoch. Ray's health checks
are shortened on the head (``ray_cluster.FAST_NODE_DEATH``) so the node is declared dead in seconds; the
lost branch actors are restarted on the head, resume from their S3 checkpoints, and the run finishes with
continuous epochs and every output of docs/storage.md.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from branches._faults import ENV as FAULTS_ENV
from data_split import RunStorage
from holds import Hold
from ray_cluster import kill_node, ray_env
from test_multinode import EPOCHS, REPO, K, check_outputs, job_config, submit_command

pytestmark = [pytest.mark.slow, pytest.mark.breaks_shared_cluster]


def test_branches_of_a_lost_node_resume_on_the_survivor(two_node_cluster, s3_endpoint, tmp_path):
    uri = f"s3://test-bucket/node-loss-{uuid.uuid4().hex[:8]}/run"
    log = tmp_path / "job.log"
    cluster = two_node_cluster
    nodes = {n["node_id"]: n for n in cluster.nodes()}
    head_id = next(i for i, n in nodes.items() if n["is_head_node"])
    cmd = submit_command(
        cluster, job_config(tmp_path / "job.yaml"), uri, s3_endpoint, **{FAULTS_ENV: os.environ[FAULTS_ENV]}
    )
    hold = Hold(uri, epoch=1)  # every branch waits after its epoch-1 checkpoint
    job = subprocess.Popen(cmd, env=ray_env(), stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO)
    try:
        markers = hold.wait_reached(K, timeout_s=600, alive=lambda: job.poll() is None)
        pids = {m["k"]: m["pid"] for m in markers}
        killed = kill_node(cluster.temp_dirs[1])
        t_kill = time.monotonic()
        lost = sorted(k for k, pid in pids.items() if pid in killed)
        assert len(lost) == 2, f"expected 2 branches on the second node, killed pids {killed}, branches {pids}"
        hold.release()
        assert job.wait(timeout=600) == 0, log.read_text()[-4000:]
        after_kill_s = time.monotonic() - t_kill
    finally:
        hold.release()
        if job.poll() is None:
            job.kill()
    assert "succeeded" in log.read_text()

    storage = RunStorage(uri, s3_endpoint)
    check_outputs(storage)  # continuous epochs 1..EPOCHS, logits, ensemble, report
    for k in range(K):
        result = storage.read_json(f"branches/{k}/result.json")
        placement = storage.read_json(f"branches/{k}/placement.json")["placement"]
        if k in lost:  # restarted on the head, after the one epoch it had finished on the lost node
            assert placement["node_id"] == head_id and result["resumed_from_epoch"] == 1, (k, placement, result)
        else:
            assert result["resumed_from_epoch"] == 0, (k, result)
    print(f"node killed; run finished {after_kill_s:.1f} s later; branches {lost} resumed after epoch 1 of {EPOCHS}")
