"""Secrets are never written: not under the run, not in the lease, not in any log.

A ``spectral run`` on the loopback S3 takes its keys from the config (the key id in the config file, the
secret on the command line, where the lease's copy of the command must mask it); a ``spectral evaluate``
of the same run takes them from the environment. Every object under the run (read while the lease is
held, too), the drivers' output and every file of their Ray sessions' temp dirs (logs included) are then
searched for each secret value.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import boto3
import pytest
import yaml

from conftest import tiny_config
from holds import Hold

pytestmark = pytest.mark.slow


def _cli(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=env)


def _objects(s3, bucket: str, prefix: str) -> dict[str, bytes]:
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]
    return {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def test_no_secret_is_written_anywhere(s3_endpoint, tmp_path):
    tag = uuid.uuid4().hex[:10]
    secrets = {"config key id": f"CFGKEYID{tag}", "config secret": f"cfgsecret{tag}",
               "env key id": f"ENVKEYID{tag}", "env secret": f"envsecret{tag}"}
    uri = f"s3://test-bucket/secrets-{tag}"
    base = tiny_config(uri, **{"storage.endpoint_url": s3_endpoint, "split.rows": 1}).to_dict()  # K = 2
    with_keys = tmp_path / "with_keys.yaml"
    with_keys.write_text(yaml.safe_dump({**base, "storage": {**base["storage"], "access_key_id": secrets["config key id"]}}))
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(base))
    ray_tmp = tempfile.mkdtemp(prefix="stn-sec-", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "AWS_ACCESS_KEY_ID": secrets["env key id"], "AWS_SECRET_ACCESS_KEY": secrets["env secret"],
           "RAY_TMPDIR": ray_tmp, "COLUMNS": "200"}
    env.pop("RAY_ADDRESS", None)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    seen: dict[str, bytes] = {}
    try:
        # keys from the config; hold branch 0 after epoch 1 to read the live lease
        with Hold(uri, epoch=1, branch=0) as hold:
            run = _cli(["run", "--config", str(with_keys), "--set",
                        f"storage.secret_access_key={secrets['config secret']}"], env, tmp_path / "run.log")
            hold.wait_reached(alive=lambda: run.poll() is None)
            live = _objects(s3, "test-bucket", f"secrets-{tag}/")
            assert "storage.secret_access_key=***" in live[f"secrets-{tag}/lease.json"].decode()
            seen |= {f"(live) {k}": v for k, v in live.items()}
        assert run.wait(timeout=300) == 0, (tmp_path / "run.log").read_text()[-3000:]
        # keys from the environment
        evaluate = _cli(["evaluate", "--config", str(plain)], env, tmp_path / "evaluate.log")
        assert evaluate.wait(timeout=300) == 0, (tmp_path / "evaluate.log").read_text()[-3000:]

        seen |= _objects(s3, "test-bucket", f"secrets-{tag}/")
        assert any(k.endswith("report/report.json") for k in seen) and any(k.endswith("placement.json") for k in seen)
        for log in ("run.log", "evaluate.log"):
            seen[log] = (tmp_path / log).read_bytes()
        ray_files = [p for p in Path(ray_tmp).rglob("*") if p.is_file() and not p.is_socket()]
        assert any(p.suffix in (".log", ".out", ".err") for p in ray_files)  # the sessions' logs are there
        for p in ray_files:
            try:
                seen[str(p)] = p.read_bytes()
            except OSError:
                pass
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    leaks = [f"{what} in {name}" for name, data in seen.items() for what, value in secrets.items() if value.encode() in data]
    assert not leaks, leaks
    assert len(seen) > 30
