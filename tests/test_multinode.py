"""Across nodes: a two-node Ray cluster on this machine, a whole job submitted to it, storage on S3.

A head (``ray start --head``) and a second node (``ray start --address``), each with 2 CPUs and its own
custom resource, temp dir and ports (the session's ``conftest.two_node_cluster``); branches at 1 CPU
each, so the 4 branches of a sub4 split cannot all fit on one node. The job is ``spectral run``, then
``spectral baseline`` with the DDP engine on the same run, through one ``ray job submit``; its storage
``s3://test-bucket/...`` on the loopback S3 endpoint, the keys only in the job's config
(``storage.access_key_id``/``secret_access_key``): neither the Ray nodes nor the job's environment hold any,
so the split's tasks, the branch actors and Ray Train's workers and controller all use the config's. Checked
from outside the job: every branch's ``placement.json`` (node and files read, written by the branch actor),
every output of docs/storage.md (the job's config says ``ray.address: auto``) and the DDP baseline's result.
A second test
drives the same cluster through the Python API with a ``ray://`` address.

The cluster is stopped by killing its own processes (found by their temp dirs): ``ray stop`` would
stop every Ray on the machine, other test sessions' included.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from data_split import RunStorage, load_manifest
from ray_cluster import BIN, TwoNodeCluster, ray_env

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
K = 4
EPOCHS = 2


def job_config(path: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "source": {
                    "name": "synthetic",
                    "synthetic": {"train": 400, "test": 100, "height": 8, "width": 8, "classes": 4},
                },
                "split": {"rows": 2, "cols": 2},
                "model": {"name": "fc4"},
                "train": {"epochs": EPOCHS, "batch_size": 64},
                # 1 CPU per branch on 2-CPU nodes: at most 2 branches per node, so 4 branches need both nodes.
                "resources": {"gpus_per_branch": 0, "cpus_per_branch": 1, "max_restarts": 1},
                "ensemble": {"weights": "geometric"},
                # docs/clusters.md's "auto" (join the cluster this process runs on): inside a job, through RAY_ADDRESS.
                "ray": {"address": "auto"},
                # The loopback S3's fake keys, from the config only (nothing in the environment to fall back on).
                "storage": {
                    "access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
                    "secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"],
                },
            }
        )
    )
    return path


def submit_command(
    cluster: TwoNodeCluster, config: Path, uri: str, endpoint: str, *then: str, **env_vars: str
) -> list[str]:
    """``ray job submit`` of ``spectral run``, then of each CLI command in ``then`` on the same run (one job:
    one submission's overhead); ``env_vars`` go to the job, no AWS keys (the config holds them)."""
    runtime_env = {"env_vars": {"AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true", **env_vars}}
    common = ["--config", str(config), "--storage", uri, "--set", f"storage.endpoint_url={endpoint}"]
    commands = [shlex.join(["spectral", *cmd.split()[:1], *common, *cmd.split()[1:]]) for cmd in ("run", *then)]
    return [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        cluster.dashboard,
        "--working-dir",
        str(REPO),
        "--runtime-env-json",
        json.dumps(runtime_env),
        "--",
        "sh",
        "-c",
        " && ".join(commands),
    ]


def submit(cluster: TwoNodeCluster, config: Path, uri: str, endpoint: str, *then: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        submit_command(cluster, config, uri, endpoint, *then),
        env=ray_env(),
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )


def npy(storage: RunStorage, rel: str) -> np.ndarray:
    return np.load(io.BytesIO(storage.read_bytes(rel)))


def test_branches_spread_over_two_nodes_and_read_only_their_shards_from_s3(two_node_cluster, s3_endpoint, tmp_path):
    uri = f"s3://test-bucket/{uuid.uuid4().hex}/run"
    # The run, then the DDP baseline of the same run in the same job: Ray Train inside a job, on S3.
    proc = submit(
        two_node_cluster,
        job_config(tmp_path / "job.yaml"),
        uri,
        s3_endpoint,
        "baseline --set baseline.engine=ddp --set baseline.workers=2",
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "succeeded" in proc.stdout
    assert "Ray Train DDP, 2 workers, gloo" in proc.stdout  # the baseline's CLI summary line

    nodes = {n["node_id"]: n for n in two_node_cluster.nodes()}
    head_id = next(i for i, n in nodes.items() if n["is_head_node"])
    second_id = next(i for i, n in nodes.items() if not n["is_head_node"])
    assert "second" in nodes[second_id]["resources_total"]

    storage = RunStorage(uri, s3_endpoint)
    manifest = load_manifest(storage)
    assert manifest.K == K

    # -- placement and isolation, as each branch actor recorded them --------------------------------
    placed_on = {}
    for k in range(K):
        record = storage.read_json(f"branches/{k}/placement.json")
        placed_on[k] = record["placement"]["node_id"]
        assert record["placement"]["gpu_ids"] == []
        assert record["isolation"]["process_group"] is False
        shards = [f for f in record["isolation"]["files_read"] if f.startswith("data/") and f.endswith(".parquet")]
        assert {f.split("/")[1] for f in shards} == {"train", "val", "test"}, shards
        foreign = [f for f in shards if not re.fullmatch(rf"data/(train|val|test)/branch={k}/[^/]+\.parquet", f)]
        assert not foreign, f"branch {k} read other branches' shards: {foreign}"
        own = {f for s in manifest.branches[k].splits.values() for f in s.files}
        assert set(shards) == own, f"branch {k} read {sorted(shards)}, its shards are {sorted(own)}"
    assert set(placed_on.values()) == {head_id, second_id}, f"branches not spread over both nodes: {placed_on}"
    assert sorted(list(placed_on.values()).count(n) for n in (head_id, second_id)) == [2, 2]

    check_outputs(storage)
    result = storage.read_json("baseline-ddp/result.json")
    assert result["workers"] == 2 and result["backend"] == "gloo"
    assert result["allreduce_bytes_per_worker"] == result["steps"] * result["parameters"] * 4
    report = storage.read_json("report/report.json")  # rebuilt by the baseline: the branches and the DDP engine
    assert len(report["branches"]) == K and report["baseline_ddp"]["workers"] == 2


def check_outputs(storage: RunStorage) -> None:
    """Every output of docs/storage.md, complete: shards, checkpoints, continuous metrics, logits, report."""
    manifest = load_manifest(storage)
    classes = manifest.source.classes
    for split in ("train", "val", "test"):
        for k in range(K):
            parts = [p for p in storage.ls(f"data/{split}/branch={k}") if p.endswith(".parquet")]
            assert parts, f"no parquet for {split} branch {k}"
    for k in range(K):
        base = f"branches/{k}"
        for e in range(1, EPOCHS + 1):
            assert storage.exists(f"{base}/checkpoints/epoch={e}.pt"), f"{base}: epoch {e} checkpoint"
        metrics = [json.loads(line) for line in storage.read_bytes(f"{base}/metrics.jsonl").decode().splitlines()]
        assert [m["epoch"] for m in metrics] == list(range(1, EPOCHS + 1))
        for split in ("val", "test"):
            logits = npy(storage, f"{base}/logits_{split}.npy")
            rows = manifest.branches[k].splits[split].rows
            assert logits.dtype == np.float32 and logits.shape == (rows, classes), (split, logits.shape)
            assert np.isfinite(logits).all()
        assert storage.read_json(f"{base}/result.json")["epochs"] == EPOCHS
    weights = storage.read_json("ensemble/weights.json")
    assert weights["method"] == "geometric"
    report = storage.read_json("report/report.json")
    assert len(report["branches"]) == K
    assert storage.read_bytes("report/report.md").decode().strip()
    pngs = [p for p in storage.ls("report") if p.endswith(".png")]
    assert pngs and all(storage.read_bytes(f"report/{p}")[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


API_DRIVER = """
import json, sys
from data_split import RunStorage, load_manifest
from orchestrator import api, load_config, run
from orchestrator.launcher import BranchFailedError
cfg = load_config(sys.argv[1], {"ray.address": sys.argv[2], "storage.uri": sys.argv[3]})
result = run(cfg)
print(json.dumps({k: r["placement"]["node_id"] for k, r in result.training.results.items()}), flush=True)
# In the same Ray Client session: branch 1 trains again with one of its shards gone, a deterministic
# failure (FileNotFoundError: not retried), which must cross ray:// as our own error.
storage = RunStorage(cfg.storage.uri)
shard = load_manifest(storage).branches[1].splits["train"].files[0]
storage.remove("branches/1")
storage.remove(shard)
try:
    api.train(cfg)
except BranchFailedError as e:
    failures = {str(k): v for k, v in e.failures.items()}
    print(json.dumps({"shard": shard, "type": type(e).__name__, "failures": failures}))
else:
    print(json.dumps({"shard": shard, "type": None, "failures": {}}))  # trained without its shard: the test fails
"""
API_ATTEMPT_TIMEOUT_S = 300  # a run takes ~1 min here; a Ray Client whose server failed to start can hang


def drive(driver: str, config: Path, address: str, env: dict, run_dir: Path) -> subprocess.CompletedProcess:
    for _ in (1, 2):
        try:
            proc = subprocess.run(
                [sys.executable, "-c", driver, str(config), address, str(run_dir)],
                env=env,
                capture_output=True,
                text=True,
                timeout=API_ATTEMPT_TIMEOUT_S,
                cwd=REPO,
            )
        except subprocess.TimeoutExpired as e:  # its output comes as bytes, text=True or not
            out, err = (x.decode(errors="replace") if isinstance(x, bytes) else x or "" for x in (e.stdout, e.stderr))
            proc = subprocess.CompletedProcess(e.cmd, -1, out, err)
        # Ray Client's proxy now and then fails to start the server of a new client on this shared machine
        # (its process exits at once, logging nothing): one more try, unless the driver got as far as a result.
        if proc.returncode == 0 or "{" in proc.stdout:
            break
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_python_api_runs_on_the_cluster_through_a_ray_client_address(two_node_cluster, tmp_path):
    """docs/clusters.md's API call with ``ray.address: ray://...`` (``auto`` is the job test's address)."""
    config = job_config(tmp_path / "job.yaml")
    address, env = two_node_cluster.client, ray_env()
    run_dir = tmp_path / "run"
    proc = drive(API_DRIVER, config, address, env, run_dir)
    placed_on, failed = (json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{"))
    assert set(placed_on.values()) == {n["node_id"] for n in two_node_cluster.nodes()}
    assert failed["type"] == "BranchFailedError" and list(failed["failures"]) == ["1"], failed
    assert "FileNotFoundError" in failed["failures"]["1"] or failed["shard"] in failed["failures"]["1"], failed
    assert len(RunStorage(str(run_dir)).read_json("report/report.json")["branches"]) == K


def test_serve_deploy_of_a_config_file_serves_the_ensemble_from_the_cluster(two_node_cluster, trained_tiny_run):
    """``serve deploy CONFIG``, the production path: the config (``import_path: inference.serve:app_builder``)
    goes to the head's dashboard (Serve's REST API), whose controller builds and runs the app; ``serve status``
    reports it and ``serve shutdown`` takes it down. (``serve run`` of the same config and of the import path:
    tests/test_serve.py, on the session's Ray, which has no dashboard.)"""
    import torch

    from conftest import free_port
    from data_split import make_source
    from inference import load_ensemble
    from test_serve import DEPLOY_CONFIG, encode, request, serve_cli, wait_answering

    port, dashboard = free_port(), two_node_cluster.dashboard
    config = Path(trained_tiny_run.storage.uri).parent / "deploy.yaml"
    proxy = "proxy_location: HeadOnly\n"  # one HTTP proxy, not one per node: the test asks the head's
    config.write_text(proxy + DEPLOY_CONFIG.format(uri=trained_tiny_run.storage.uri, port=port))
    serve_cli("deploy", str(config), "--address", dashboard, address=two_node_cluster.address)
    try:
        wait_answering(f"http://127.0.0.1:{port}/built/healthz")
        x, _ = make_source(trained_tiny_run.source).read("test", 0, 1)
        model = load_ensemble(RunStorage.from_config(trained_tiny_run.storage), "uniform")  # the config's weights
        with torch.no_grad():
            want = torch.softmax(model(torch.from_numpy(x.astype(np.float32) * np.float32(1 / 255))), 1).numpy()
        status, answer = request(f"http://127.0.0.1:{port}/built/predict", encode(x[0]))
        assert status == 200 and answer["class"] == int(want[0].argmax())
        np.testing.assert_allclose(answer["probabilities"], want[0], rtol=0, atol=1e-5)
        shown = subprocess.run(
            [str(BIN / "serve"), "status", "--address", dashboard], capture_output=True, text=True, timeout=120
        )
        assert yaml.safe_load(shown.stdout)["applications"]["built"]["status"] == "RUNNING", shown.stdout
    finally:
        serve_cli("shutdown", "--yes", "--address", dashboard, address=two_node_cluster.address)
