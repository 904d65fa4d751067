"""Storage outages: the loopback S3 endpoint goes away mid-training and comes back on the same port.

A branch stops at a known point (``tests/holds.Hold``: after branch 0's checkpoint of an epoch is
written it waits for the test), the test stops the endpoint, lets the branch go on into the outage,
and restarts the endpoint with the same data (moto keeps its state in this process's backend, so a new
``ThreadedMotoServer`` on the same port serves the same buckets). Each driver is a real
``spectral run`` process joining the session's Ray (``RAY_ADDRESS``), its branches streaming their shards from S3
(``train.data: stream``: the next epoch's row-group reads run into the outage, as do the writes).

- longer than ``storage.retry_budget_s``: the run fails, naming the endpoint; a re-run resumes the
  branch from its last complete checkpoint;
- shorter (5 s): the reads and writes retry with backoff and the run finishes, every epoch exactly once.

What serve's start-up and predict's actors read (the model: manifest, results, checkpoints; the images)
goes through the same retries: checked in this process on the functions they run.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
import yaml

from conftest import free_port, tiny_config, wait_until
from data_split import RunStorage
from holds import Hold

pytestmark = pytest.mark.slow

OUTAGE_S = 5.0
EPOCHS = 3
K = 2  # branches: one held into the outage, one more that rides it out unheld (2 CPUs: both train at once)


class RestartableS3:
    """A moto S3 server on a fixed loopback port that can be stopped and started again with its data."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._cls, self.port = ThreadedMotoServer, free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server = None
        self.placeholder: socket.socket | None = None  # binds the port while the server is down
        self.start()

    def start(self) -> None:
        if self.placeholder is not None:
            self.placeholder.close()
            self.placeholder = None
        self.server = self._cls(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        """Down: the port stays bound but does not listen (connections are refused, as to a stopped server),
        so that no other process's outgoing connection can take it before the restart."""
        self.server.stop()
        self.server = None
        self.placeholder = socket.socket()
        self.placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.placeholder.bind(("127.0.0.1", self.port))
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", self.port)) != 0


@pytest.fixture
def s3():
    server = RestartableS3()
    yield server
    if server.server is not None:
        server.server.stop()
    if server.placeholder is not None:
        server.placeholder.close()


def _reached(hold: Hold, proc: subprocess.Popen, log: Path) -> None:
    """Wait (with the hold's deadline) until the held branch has written its epoch; fail if the driver ends first."""
    try:
        hold.wait_reached(alive=lambda: proc.poll() is None)
    except AssertionError as e:
        raise AssertionError(f"{e} (driver exit code {proc.poll()}):\n{log.read_text()[-3000:]}") from None


def _logged(proc: subprocess.Popen, log: Path, text: str, timeout_s: float = 120) -> None:
    """Wait (with a deadline) until the driver's output has ``text``; fail if the driver ends first."""
    wait_until(
        lambda: text in " ".join(log.read_text().split()),  # rich wraps long log lines
        timeout_s=timeout_s,
        what=f"the driver logged {text!r}",
        alive=lambda: proc.poll() is None,
        detail=lambda: log.read_text()[-3000:],
    )


def _spectral_run(config: Path, log: Path, ray_address: str, *sets: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "orchestrator.cli", "run", "--config", str(config)]
    for s in sets:
        args += ["--set", s]
    # RAY_DEDUP_LOGS=0: the driver prints every actor line. Ray's dedup treats lines equal up to their words with
    # digits as repeats, so branch 0's "open s3://.../train/branch=0/part-0.parquet ... retry 1" was folded into
    # branch 1's earlier val-read line ("[repeated 3x across cluster]") whenever branch 1 hit the outage first.
    env = {**os.environ, "COLUMNS": "200", "RAY_ADDRESS": ray_address, "RAY_DEDUP_LOGS": "0"}
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout_s: float = 300) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def _epochs(storage: RunStorage, k: int) -> list[int]:
    return [
        json.loads(line)["epoch"] for line in storage.read_bytes(f"branches/{k}/metrics.jsonl").decode().splitlines()
    ]


def test_outage_past_the_budget_fails_then_a_short_outage_is_ridden_out(s3, ray_address, tmp_path):
    bucket = f"outage-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3.endpoint).create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/run"
    cfg = tiny_config(
        uri,
        **{
            "storage.endpoint_url": s3.endpoint,
            "train.epochs": EPOCHS,
            "split.rows": 1,
            "train.data": "stream",
            "resources.branches_per_process": 2,  # streamed branches do not pack: each trains unpacked
        },
    )
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    storage = RunStorage(uri, s3.endpoint)

    # 1. Outage longer than a 2 s budget, right after branch 0's epoch 1 is on storage: the run fails. The
    #    endpoint comes back once branch 0 has failed (so the driver's exit does not wait on it as well).
    with Hold(uri, epoch=1, branch=0) as hold:
        first = _spectral_run(config, tmp_path / "first.log", ray_address, "storage.retry_budget_s=2")
        _reached(hold, first, tmp_path / "first.log")
        s3.stop()
    _logged(first, tmp_path / "first.log", "branch 0 failed: StorageError")
    s3.start()
    assert _finish(first) == 1
    out = (tmp_path / "first.log").read_text()
    assert "BranchFailedError" in out and "branch 0" in out, out[-3000:]
    assert s3.endpoint in out and "retry_budget_s" in out, out[-3000:]  # the error names the endpoint
    assert _epochs(storage, 0) == [1]  # epoch 2 never completed
    assert not storage.exists("branches/0/result.json")

    # 2. The re-run resumes branch 0 after epoch 1; a 5 s outage after its epoch 2 is ridden out.
    with Hold(uri, epoch=2, branch=0) as hold:
        second = _spectral_run(config, tmp_path / "second.log", ray_address, "storage.retry_budget_s=60")
        _reached(hold, second, tmp_path / "second.log")
        s3.stop()
    t0 = time.monotonic()
    time.sleep(OUTAGE_S)  # the outage itself: a duration, not a wait for an event
    s3.start()
    assert _finish(second) == 0, (tmp_path / "second.log").read_text()[-3000:]
    finished_after_outage_s = time.monotonic() - t0
    out = " ".join((tmp_path / "second.log").read_text().split())  # rich wraps long log lines
    assert "retry" in out and s3.endpoint in out  # the retries were logged, naming the endpoint
    assert re.search(r"(open|read row group \d+ of) s3://\S+/data/train/branch=0/part", out), out[
        -3000:
    ]  # a shard read

    assert "branch 0: resuming after epoch 1" in out  # the branch actor's own INFO line reached the driver
    result = storage.read_json("branches/0/result.json")
    assert result["resumed_from_epoch"] == 1 and result["data_mode"] == "stream"
    for k in range(K):
        assert _epochs(storage, k) == list(range(1, EPOCHS + 1))
    assert storage.exists("report/report.json") and storage.exists("ensemble/weights.json")
    assert not storage.exists("lease.json")  # the second driver released it
    print(f"outage {OUTAGE_S:.0f} s; run finished {finished_after_outage_s:.1f} s after the outage began")


# -- a half-written object is never loaded ---------------------------------------------------------------
def test_interrupted_put_leaves_no_object(s3):
    """A PUT whose connection drops mid-body creates nothing: a reader finds no file, never half of one."""
    bucket = f"half-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3.endpoint).create_bucket(Bucket=bucket)
    storage = RunStorage(f"s3://{bucket}/run", s3.endpoint)
    storage.write_bytes("branches/0/checkpoints/epoch=1.pt", b"old")
    body = b"x" * 10_000
    with socket.create_connection(("127.0.0.1", s3.port)) as sock:
        sock.sendall(
            f"PUT /{bucket}/run/branches/0/checkpoints/epoch=2.pt HTTP/1.1\r\nHost: 127.0.0.1:{s3.port}\r\n"
            f"Content-Length: {2 * len(body)}\r\n\r\n".encode()
            + body
        )
    boto3.client("s3", endpoint_url=s3.endpoint).put_object(Bucket=bucket, Key="barrier", Body=b"")  # server moved on
    assert storage.ls("branches/0/checkpoints") == ["epoch=1.pt"]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("branches/0/checkpoints/epoch=2.pt")


def test_writer_killed_mid_write_leaves_the_old_file_and_a_hidden_leftover(tmp_path):
    """Local disk: a writer killed before its rename leaves only a hidden temporary that nothing reads."""
    from branches.checkpoint import find_resume_point, save_checkpoint

    storage = RunStorage(str(tmp_path / "run"))
    state = {
        "epoch": 1,
        "model": {},
        "optimizer": {},
        "scheduler": {},
        "rng": {},
        "model_config": {},
        "train_config": {},
        "history": [],
    }
    save_checkpoint(storage, 0, state)
    script = (
        "import os, signal, sys\n"
        "from data_split.storage import RunStorage\n"
        "from branches.checkpoint import save_checkpoint\n"
        "def crash(src, dst):\n"
        "    os.truncate(src, os.path.getsize(src) // 2)  # half of it on disk\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "os.replace = crash\n"
        f"save_checkpoint(RunStorage({storage.uri!r}), 0, {{**{state!r}, 'epoch': 2}})\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    names = os.listdir(tmp_path / "run/branches/0/checkpoints")
    assert "epoch=1.pt" in names and "epoch=2.pt" not in names
    assert any(n.startswith(".epoch=2.pt.tmp-") for n in names)  # the half file, hidden
    found = find_resume_point(storage, 0, max_epoch=5)
    assert found.epoch == 1 and found.skipped == ()


# -- what serve's start-up and predict's actors read, through an outage ---------------------------------------
def _on_s3(s3: RestartableS3, local: RunStorage, budget_s: float) -> RunStorage:
    """A copy of the run at ``local`` in a fresh bucket of ``s3``."""
    bucket = f"infer-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3.endpoint).create_bucket(Bucket=bucket)
    run = RunStorage(f"s3://{bucket}/run", s3.endpoint, retry_budget_s=budget_s)
    for path in local.fs.find(local.root):
        run.write_bytes(path[len(local.root) + 1 :], local.fs.cat_file(path))
    return run


def _during_outage(s3: RestartableS3, call, caplog) -> dict:
    """``call()`` started while the endpoint is down; the endpoint comes back once the call has logged a retry."""
    import logging
    import threading

    outcome: dict = {}

    def work() -> None:
        try:
            outcome["value"] = call()
        except BaseException as e:  # handed to the test thread
            outcome["error"] = e

    s3.stop()
    with caplog.at_level(logging.WARNING, logger="data_split.storage"):
        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        wait_until(
            lambda: "retry 1" in caplog.text,
            timeout_s=60,
            what="the call retried during the outage",
            alive=worker.is_alive,
        )
        s3.start()
        worker.join(timeout=120)
    assert not worker.is_alive() and "error" not in outcome, outcome
    return outcome


def test_model_load_and_image_reads_ride_out_an_outage_and_fail_clearly_past_the_budget(s3, trained_tiny_run, caplog):
    import dataclasses

    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from PIL import Image

    from data_split import StorageError, make_source
    from inference import load_ensemble
    from inference.predict import Classifier

    run = _on_s3(s3, RunStorage(trained_tiny_run.storage.uri), budget_s=60)
    # serve's start-up (and each replica's) and predict's actors: load_ensemble on the run's storage object
    model = _during_outage(s3, lambda: load_ensemble(run), caplog)["value"]
    x, _ = make_source(trained_tiny_run.source).read("test", 0, 6)
    images = run.at(f"{run.uri}/images")
    for i, img in enumerate(x):
        buf = io.BytesIO()
        Image.fromarray(img[0]).save(buf, format="PNG")
        images.write_bytes(f"{i}.png", buf.getvalue())
    parts = run.at(f"{run.uri}/parts")
    classifier = Classifier(run, images, "chosen", use_gpu=False, threads=1, parts=parts)
    batch = {"path": np.array([images.path(f"{i}.png") for i in range(len(x))])}
    caplog.clear()
    table = _during_outage(s3, lambda: classifier(batch), caplog)["value"]  # predict's image reads
    assert table.column("error").null_count == len(x)  # every image read, none reported unreadable
    with torch.no_grad():
        want = model(torch.from_numpy(x.astype(np.float32) / 255)).argmax(1).numpy()
    np.testing.assert_array_equal(table.column("pred").to_numpy(), want)
    (part,) = parts.ls("")  # the batch's rows, written by the actor through the outage too
    assert pq.read_table(io.BytesIO(parts.read_bytes(part))).column("pred").to_pylist() == want.tolist()

    s3.stop()  # past the budget: the one-line error naming the endpoint, for the model and for the images
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=rf"{s3.endpoint}.*retry_budget_s = 1\)"):
        load_ensemble(dataclasses.replace(run, retry_budget_s=1.0))
    classifier.images = dataclasses.replace(images, retry_budget_s=1.0)
    with pytest.raises(StorageError, match=rf"cannot read .*{s3.endpoint}.*retry_budget_s = 1\)"):
        classifier(batch)
    assert time.monotonic() - t0 < 30
