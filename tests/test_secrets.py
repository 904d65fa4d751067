"""Credentials given only in the config reach every command, and no secret is written or printed anywhere.

The environment of the commands under test holds no AWS keys (and no instance metadata), so any component that
lost the config's keys fails. Verbose: the first command, which starts Ray, runs without ``-v`` (our lines
only: no Ray notices), every later one that touches S3 with ``-v`` (export with ``-vv``, which turns on
botocore's request-signing lines). One Python driver process calls the CLI's ``main`` for each command, so
that one Ray serves all of them (what keeps this test affordable):

1. ``run`` with the key id in the config file and the secret on the command line (``sys.argv`` as the CLI
   would have it: the lease's copy of the command masks it), branches streaming from S3; branch 0 is held after
   epoch 1 for the test to read the live lease;
2. ``evaluate`` of the same run with the keys from the environment instead (set for that command only);
3. export, predict (twice: the second is refused, the output is complete), serve (beside a second Serve
   application, which must survive our Ctrl-C), a sweep (Ray Tune: a trial streaming its branch from S3) and a
   split whose ``--config`` is the sweep's ``s3://.../best_config.yaml``, all with the config's keys.

The DDP baseline (Ray Train) and in-memory branches with config-only keys: ``tests/test_multinode.py``'s job,
whose cluster and job environment hold no AWS keys.

Then every object under the run (read while the lease is held, too), the drivers' output and every file of
their Ray sessions (logs included) are searched for each secret value, raw, hex- and base64-encoded (Tune
stores cloudpickled objects as hex inside its experiment state).
"""

from __future__ import annotations

import base64
import io
import json
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

from conftest import free_port, tiny_config
from holds import Hold

pytestmark = pytest.mark.slow

DRIVER = r"""
import json, os, sys, time, urllib.request
from orchestrator import cli

args = json.load(open(sys.argv[1]))
url = f"http://127.0.0.1:{args['port']}"
keys = args.pop("keys")  # from a file: this process's real command line names no secret


def command(name, argv, expect=0):
    print(f"=== {name}", flush=True)
    code = cli.main(argv)
    print(f"=== {name} exit {code}", flush=True)
    assert code == expect, (name, code)


def get(path, data=None):
    req = urllib.request.Request(url + path, data=data, headers={"content-type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.status, resp.read().decode()


def wait_up(path, deadline_s=120):
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return get(path)
        except OSError:
            assert time.monotonic() < deadline, f"{path} never answered"
            time.sleep(0.2)


run = ["run", "--config", args["key_id_config"], "--set", f"storage.secret_access_key={keys['config secret']}"]
sys.argv = ["spectral", *run]  # what the lease records of a CLI's command line
command("run", run)
sys.argv = ["spectral"]
os.environ.update(AWS_ACCESS_KEY_ID=keys["env key id"], AWS_SECRET_ACCESS_KEY=keys["env secret"])
command("evaluate", ["evaluate", "--config", args["plain_config"]])  # keys from the environment
del os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]

config = ["--config", args["config"]]
command("export", ["-vv", "export", *config, "--output", args["export"]])
command("predict", ["predict", "-v", *config, "--input", args["images"], "--output", args["predictions"]])
command("predict again", ["predict", "-v", *config, "--input", args["images"], "--output", args["predictions"]],
        expect=1)

from ray import serve  # a second application, someone else's, on the same Serve
serve.start(http_options={"host": "127.0.0.1", "port": args["port"]})


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Other:
    async def __call__(self, request):
        return "the other application"


serve.run(Other.bind(), name="other", route_prefix="/other")
seen = {}


def interrupt_once_serving():  # what Ctrl-C does to `spectral serve`: KeyboardInterrupt in its wait
    seen["healthz"] = wait_up("/healthz")
    seen["predict"] = get("/predict", open(args["image"], "rb").read())
    raise KeyboardInterrupt


cli.wait_for_interrupt = interrupt_once_serving
command("serve", ["serve", "-v", *config, "--port", str(args["port"]), "--set", "serve.cpus_per_replica=0"], expect=130)
apps = serve.status().applications
seen["apps"] = {name: getattr(app.status, "value", str(app.status)) for name, app in apps.items()}
seen["other"] = get("/other")
print("SERVE " + json.dumps(seen), flush=True)

command("sweep", ["sweep", "-v", *config])
store = {"endpoint_url": args["endpoint"], "access_key_id": keys["config key id"],
         "secret_access_key": keys["config secret"]}
command("split --config s3://.../best_config.yaml",
        ["split", "-v", "--config", args["best_config"], *[f"--set=storage.{k}={v}" for k, v in store.items()]])
"""


def _objects(s3, bucket: str, prefix: str) -> dict[str, bytes]:
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for o in page.get("Contents", [])
    ]
    return {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def _encodings(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, raw.hex().encode(), base64.b64encode(raw)]


def _section(log: str, name: str) -> str:
    return log.split(f"=== {name}\n", 1)[1].split(f"=== {name} exit", 1)[0]


def _png(img) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img[0]).save(buf, format="PNG")
    return buf.getvalue()


def test_config_only_credentials_reach_every_command_and_no_secret_is_written_anywhere(s3_endpoint, tmp_path):
    from data_split import make_source

    tag = uuid.uuid4().hex[:10]
    secrets = {
        "config key id": f"CFGKEYID{tag}",
        "config secret": f"cfgsecret{tag}",
        "env key id": f"ENVKEYID{tag}",
        "env secret": f"envsecret{tag}",
    }
    prefix = f"secrets-{tag}"
    uri = f"s3://test-bucket/{prefix}"
    base = tiny_config(
        uri,
        **{
            "storage.endpoint_url": s3_endpoint,
            "split.rows": 1,
            "train.epochs": 1,  # K = 2
            "train.data": "stream",
            "sweep.space": {"train.lr": {"loguniform": [1.0e-3, 1.0e-2]}},
            "sweep.num_samples": 1,
            "sweep.scheduler": "fifo",
        },
    ).to_dict()
    key_id_only = {**base, "storage": {**base["storage"], "access_key_id": secrets["config key id"]}}
    with_key_id = tmp_path / "with_key_id.yaml"
    with_key_id.write_text(yaml.safe_dump(key_id_only))
    with_keys = tmp_path / "with_keys.yaml"  # the driver's: its command line must not carry the secret either
    with_keys.write_text(
        yaml.safe_dump({**base, "storage": {**key_id_only["storage"], "secret_access_key": secrets["config secret"]}})
    )
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(base))
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    x, y = make_source(tiny_config("unused").source).read("test", 0, 6)
    for i in range(len(x)):
        s3.put_object(Bucket="test-bucket", Key=f"{prefix}/images/{y[i]}/{i}.png", Body=_png(x[i]))
    (tmp_path / "one.png").write_bytes(_png(x[0]))

    ray_tmp = tempfile.mkdtemp(prefix="stn-sec-", dir="/tmp")  # short: Ray's socket paths live under it
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")
    }
    env |= {
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
        "RAY_TMPDIR": ray_tmp,
        "COLUMNS": "200",
    }  # RAY_AUTH_MODE unset: Ray's default token auth, whose notice is hidden without -v
    port = free_port()
    args = {
        "key_id_config": str(with_key_id),
        "plain_config": str(plain),
        "config": str(with_keys),
        "port": port,
        "image": str(tmp_path / "one.png"),
        "export": f"{uri}/export/model.pt2",
        "images": f"{uri}/images",
        "predictions": f"{uri}/predictions",
        "best_config": f"{uri}/tune/best_config.yaml",
        "endpoint": s3_endpoint,
        "keys": secrets,
    }
    (tmp_path / "driver.json").write_text(json.dumps(args))
    seen: dict[str, bytes] = {}
    try:
        with Hold(uri, epoch=1, branch=0) as hold:  # branch 0 waits after epoch 1: the lease is live
            driver = subprocess.Popen(
                [sys.executable, "-c", DRIVER, str(tmp_path / "driver.json")],
                stdout=(tmp_path / "driver.log").open("w"),
                stderr=subprocess.STDOUT,
                env=env,
            )
            hold.wait_reached(alive=lambda: driver.poll() is None)
            live = _objects(s3, "test-bucket", f"{prefix}/")
            assert "storage.secret_access_key=***" in live[f"{prefix}/lease.json"].decode()
            seen |= {f"(live) {k}": v for k, v in live.items()}
        assert driver.wait(timeout=900) == 0, (tmp_path / "driver.log").read_text()[-5000:]
        log = (tmp_path / "driver.log").read_text()

        served = json.loads(next(line for line in log.splitlines() if line.startswith("SERVE "))[6:])
        assert served["healthz"][0] == 200 and served["predict"][0] == 200 and "class_name" in served["predict"][1]
        assert served["apps"] == {"other": "RUNNING"}  # ours deleted by Ctrl-C, the other application untouched
        assert served["other"] == [200, "the other application"]
        quiet = _section(log, "run")  # no -v: our lines and the branches' (Ray's notices hidden)
        assert "done in" in quiet and "Token authentication" not in quiet and "Started a local Ray" not in quiet, quiet[
            -3000:
        ]
        assert "classified 6 images" in _section(log, "predict")
        assert "is complete (it has _SUCCESS); pass --overwrite" in _section(log, "predict again")
        assert "Sending http request" in _section(log, "export")  # -vv: botocore's lines were printed (and masked)
        assert "sub-datasets: " in _section(log, "split --config s3://.../best_config.yaml")
        objects = _objects(s3, "test-bucket", f"{prefix}/")
        for key in (
            "predictions/_SUCCESS",
            "export/model.pt2",
            "tune/sweep.json",
            "report/report.json",
            "branches/1/placement.json",
        ):
            assert f"{prefix}/{key}" in objects, key
        assert any("experiment_state" in k for k in objects)  # Tune's, where a pickled filesystem would sit
        seen |= objects
        seen["driver.log"] = (tmp_path / "driver.log").read_bytes()
        ray_files = [p for p in Path(ray_tmp).rglob("*") if p.is_file() and not p.is_socket()]
        assert any(p.suffix in (".log", ".out", ".err") for p in ray_files)  # the sessions' logs are there
        for p in ray_files:
            try:
                seen[str(p)] = p.read_bytes()
            except OSError:
                pass
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    leaks = [
        f"{what} in {name}"
        for name, data in seen.items()
        for what, value in secrets.items()
        if any(e in data for e in _encodings(value))
    ]
    assert not leaks, leaks
    assert len(seen) > 30
