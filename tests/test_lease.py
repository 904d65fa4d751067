"""One driver per run: the lease's decision (pure), and the lease on local storage and on the loopback S3."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

from conftest import wait_until
from data_split.storage import RunStorage
from orchestrator.lease import (
    LEASE_FILE,
    Decision,
    Lease,
    LeaseHeldError,
    _Conflict,
    _Store,
    command_line,
    decide,
    hold_lease,
)

HOST = socket.gethostname()


def _lease(**kw) -> dict:
    return {
        "host": "other-host",
        "pid": 4242,
        "started": 100.0,
        "heartbeat": 100.0,
        "command": "spectral run",
        "token": "theirs",
        **kw,
    }


def _decide(current, now=110.0, alive=True):
    return decide(current, token="mine", now=now, timeout_s=30.0, host=HOST, pid_alive=lambda pid: alive)


# -- the decision, without storage or Ray -------------------------------------------------------------
def test_decide_take_refuse_take_over():
    assert _decide(None) is Decision.TAKE
    assert _decide(_lease(token="mine")) is Decision.TAKE  # re-entry by the same driver
    assert _decide(_lease()) is Decision.REFUSE  # live, 10 s old heartbeat
    assert _decide(_lease(), now=131.0) is Decision.TAKE_OVER  # heartbeat 31 s old > 30 s
    assert _decide(_lease(), now=130.0) is Decision.REFUSE  # exactly at the timeout: still live
    # a dead pid means something only on the holder's own host
    assert _decide(_lease(), alive=False) is Decision.REFUSE
    assert _decide(_lease(host=HOST), alive=False) is Decision.TAKE_OVER
    assert _decide(_lease(host=HOST), alive=True) is Decision.REFUSE


# -- on storage ----------------------------------------------------------------------------------------
@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return RunStorage(str(tmp_path / "run"))
    endpoint = request.getfixturevalue("s3_endpoint")
    return RunStorage(f"s3://test-bucket/lease-{uuid.uuid4().hex[:8]}", endpoint)


def test_second_driver_is_refused_naming_the_holder(storage):
    with hold_lease(storage, "spectral run --config a.yaml", timeout_s=30) as held:
        stored = storage.read_json(LEASE_FILE)
        assert {k: stored[k] for k in ("host", "pid", "command")} == {
            "host": HOST,
            "pid": os.getpid(),
            "command": "spectral run --config a.yaml",
        }
        with hold_lease(storage, "nested step"):  # the same driver calling another step: re-entrant
            assert storage.read_json(LEASE_FILE)["token"] == held.body["token"]
        second = Lease(storage, "spectral split --overwrite", timeout_s=30)
        with pytest.raises(LeaseHeldError) as err:
            second.acquire()
        for part in ("spectral run --config a.yaml", f"host {HOST}", f"pid {os.getpid()}", "since "):
            assert part in str(err.value)
        assert storage.read_json(LEASE_FILE)["token"] == held.body["token"]  # untouched by the refused one
    assert not storage.exists(LEASE_FILE)  # released


def test_stale_lease_is_taken_over_and_logged(storage, caplog):
    storage.write_json(LEASE_FILE, _lease(heartbeat=time.time() - 31))
    with caplog.at_level(logging.WARNING, logger="orchestrator.lease"):
        with hold_lease(storage, "spectral train", timeout_s=30):
            assert storage.read_json(LEASE_FILE)["command"] == "spectral train"
    assert any("took over" in r.getMessage() and "other-host" in r.getMessage() for r in caplog.records)


def test_lease_of_a_killed_driver_on_this_host_is_taken_over_at_once(tmp_path):
    storage = RunStorage(str(tmp_path / "run"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    storage.write_json(LEASE_FILE, _lease(host=HOST, pid=dead.pid, heartbeat=time.time()))
    with hold_lease(storage, "spectral run", timeout_s=3600):
        assert storage.read_json(LEASE_FILE)["pid"] == os.getpid()


def test_heartbeat_advances_while_held(storage):
    with hold_lease(storage, "spectral run", timeout_s=0.4):
        first = storage.read_json(LEASE_FILE)["heartbeat"]
        renewed = wait_until(
            lambda: (lease := storage.read_json(LEASE_FILE))["heartbeat"] != first and lease,
            timeout_s=30,
            what="the heartbeat renewed",
        )
    # a driver arriving once the first heartbeat is stale still finds the lease live: it was renewed
    assert renewed["heartbeat"] > first
    assert (
        decide(renewed, token="other", now=first + 0.41, timeout_s=0.4, host="other-host", pid_alive=lambda pid: True)
        is Decision.REFUSE
    )


def test_s3_writes_are_compare_and_swap(s3_endpoint):
    store = _Store(RunStorage(f"s3://test-bucket/lease-{uuid.uuid4().hex[:8]}", s3_endpoint))
    store.write({"token": "a"}, None, exists=False)
    with pytest.raises(_Conflict):  # If-None-Match: a second taker of a free lease loses
        store.write({"token": "b"}, None, exists=False)
    _, version = store.read()
    store.write({"token": "c"}, version, exists=True)
    with pytest.raises(_Conflict):  # If-Match: a write based on a stale read loses
        store.write({"token": "d"}, version, exists=True)
    assert store.read()[0] == {"token": "c"}


def test_cli_refuses_a_second_driver(tmp_path):
    """A real second process: `spectral split` on a run whose lease is held exits 1 naming the holder."""
    storage = RunStorage(str(tmp_path / "run"))
    with hold_lease(storage, "spectral run --config first.yaml", timeout_s=30):
        t0 = time.monotonic()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "orchestrator.cli",
                "split",
                "--storage",
                storage.uri,
                "--set",
                "source.name=synthetic",
                "--overwrite",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "300"},
        )
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "LeaseHeldError" in proc.stderr and "spectral run --config first.yaml" in proc.stderr
        assert f"pid {os.getpid()}" in proc.stderr and "error:" not in proc.stdout
        assert not storage.exists("data")  # refused before touching anything
        assert time.monotonic() - t0 < 60


def test_the_lease_names_the_cli_however_it_was_started():
    argv = ["run", "--config", "a.yaml", "--set", "storage.secret_access_key=hush"]
    for program in ("/venv/bin/spectral", "/repo/orchestrator/cli.py", "/repo/orchestrator/__main__.py"):
        assert command_line([program, *argv]) == "spectral run --config a.yaml --set storage.secret_access_key=***"
    assert command_line(["/home/me/job.py", "x"]) == "job.py x"
