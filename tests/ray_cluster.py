"""Local Ray clusters for tests: `ray start` on this machine with private ports and temp dirs.

``ray stop`` stops every Ray on the machine (the session's own ``ray.init`` cluster included), so the
tests stop their clusters by killing only the processes that carry their temp dir, and children.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import free_port, wait_until
from leaks import OWNER_ENV, process_owner

BIN = Path(sys.executable).parent
AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
START_ATTEMPTS = 3  # `ray start` tries, each with fresh ports, when one of its ports was taken meanwhile
# What a component that lost its port says (Python's bind check, a raylet/GCS bind failure, gRPC)
PORT_CLASH = re.compile(r"already (in use|occupied)|Address in use|[Ff]ailed to bind|EADDRINUSE")
# Ray waits a fixed 30 s for a new raylet to register with its GCS (ray/_private/node.py); with both cores busy
# (two pytest-xdist workers) a start can miss it. Not what any test is about: such a start is tried again.
NODE_TIMEOUT = re.compile(r"node timed out during startup")
RETRYABLE = re.compile(f"{PORT_CLASH.pattern}|{NODE_TIMEOUT.pattern}")

log = logging.getLogger(__name__)


def ray_env(**extra: str) -> dict:
    """The environment of `ray start` / `ray job submit`: no token auth, no usage stats, no AWS keys."""
    env = {k: v for k, v in os.environ.items() if k not in AWS_KEYS and k != "RAY_ADDRESS"}
    return {**env, "PATH": f"{BIN}:{env['PATH']}", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", **extra}


def node_ports() -> list[str]:
    """Per-node ports that default to fixed numbers (two nodes on one machine, or another test's node, would clash)."""
    names = (
        "node-manager-port",
        "object-manager-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
    )
    return [f"--{name}={free_port()}" for name in names]


def ray_processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line), read from /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        out[int(entry.name)] = (ppid, cmdline)
    return out


def stop_ray_processes(temp_dirs: list[str], timeout_s: float = 30.0) -> None:
    """Kill the Ray processes that belong to these temp dirs, and their children (workers, agents, jobs), and
    wait until none is left.

    A node's processes carry its owner mark in their environment, and most also name its temp dir in their
    command line (``kill_node``); workers are the raylet's children. Nothing else on the machine is touched. SIGKILL at
    once: a test cluster keeps nothing worth a graceful stop (SIGTERM first cost ~5 s per cluster, waiting
    on the raylets). Rescans until nothing is found, for a worker forked while the others were being killed.
    """
    deadline = time.monotonic() + timeout_s
    while killed := kill_node(*temp_dirs):
        assert time.monotonic() < deadline, f"processes of {temp_dirs} keep appearing: {sorted(killed)}"
        while killed := {pid for pid in killed if Path(f"/proc/{pid}").exists() and not _zombie(pid)}:
            assert time.monotonic() < deadline, f"processes {sorted(killed)} survived SIGKILL for {timeout_s:.0f} s"
            time.sleep(0.05)


def ray_start(
    build: Callable[[], tuple[list[str], Any]], temp_dir: str, env: dict, *, attempts: int = START_ATTEMPTS
) -> Any:
    """Run the `ray start` command ``build()`` returns as ``(cmd, ports)``; return ``ports``.

    ``free_port`` checks a port when it picks it; another process can still bind it before Ray does.
    Then (the output or the node's logs say a port is in use), or when the raylet missed Ray's fixed 30 s
    registration wait (``NODE_TIMEOUT``), this stops what the attempt started and tries again with a new
    ``build()``, at most ``attempts`` times; any other failure fails at once.
    """
    env = {**env, OWNER_ENV: node_owner(temp_dir)}  # every process of the node carries it (kill_node, leaks)
    for attempt in range(1, attempts + 1):
        cmd, ports = build()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        if proc.returncode == 0:
            return ports
        said = proc.stdout + proc.stderr + _node_logs(temp_dir)
        stop_ray_processes([temp_dir])
        clash = RETRYABLE.search(said)
        assert clash and attempt < attempts, (
            f"{' '.join(cmd)} failed (attempt {attempt} of {attempts})\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
        log.warning(
            "ray start failed (%r); retrying with new ports (%d of %d)",
            clash.group(0),
            attempt + 1,
            attempts,
        )


def _node_logs(temp_dir: str) -> str:
    """The text of a node's log files (where a raylet or the GCS reports a failed bind)."""
    text = []
    for p in Path(temp_dir).glob("session_*/logs/*"):
        try:
            text.append(p.read_text(errors="replace")[-20000:])
        except OSError:
            pass
    return "\n".join(text)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


@dataclass
class TwoNodeCluster:
    address: str  # GCS, host:port
    dashboard: str  # http://127.0.0.1:port (jobs, state API)
    client: str  # ray://127.0.0.1:port (Ray Client, for the Python API from outside the cluster)
    temp_dirs: list[str]  # the head's, the second node's: their processes carry them in their command lines

    def nodes(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.dashboard}/api/v0/nodes?detail=1", timeout=30) as r:
            return json.load(r)["data"]["result"]["result"]


# A killed node is declared dead ~3 s after its raylet stops answering (Ray's defaults: ~15-30 s): its health
# checks fail at once with the connection refused. A live node that is slow to answer on a loaded machine has
# 5 s per check, three times over, before it would be declared dead.
FAST_NODE_DEATH = {
    "RAY_health_check_initial_delay_ms": "0",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "5000",
    "RAY_health_check_failure_threshold": "3",
}


@contextlib.contextmanager
def start_two_node_cluster(env: dict | None = None) -> Iterator[TwoNodeCluster]:
    """A head (custom resource ``head``) and a second node (``second`` and ``site_b``, the locality tests'
    site); ``env`` goes to both ``ray start`` commands (so to every Ray process)."""
    # Short temp dirs: Ray's unix sockets live under them (a path limit of ~107 bytes).
    temp_dirs = [tempfile.mkdtemp(prefix="stn-head-", dir="/tmp"), tempfile.mkdtemp(prefix="stn-node-", dir="/tmp")]
    common = [
        "--num-cpus=2",
        "--num-gpus=0",
        "--node-ip-address=127.0.0.1",
        "--object-store-memory=150000000",
        "--disable-usage-stats",
    ]

    def head():
        port, dashboard, client = free_port(), free_port(), free_port()
        return [
            str(BIN / "ray"),
            "start",
            "--head",
            f"--port={port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={client}",
            '--resources={"head": 1}',
            f"--temp-dir={temp_dirs[0]}",
            *common,
            *node_ports(),
        ], (port, dashboard, client)

    def second():
        return [
            str(BIN / "ray"),
            "start",
            f"--address=127.0.0.1:{port}",
            '--resources={"second": 1, "site_b": 1}',
            f"--temp-dir={temp_dirs[1]}",
            *common,
            *node_ports(),
        ], None

    try:
        # The Ray Client proxy gives a new client's server 30 s to start; a loaded 2-core machine needs more, but
        # not 180 s: a server that died at start (it happens now and then) kept the client waiting that long
        # before tests/test_multinode.py's second try (the ray:// test took 220 s instead of 30 in one suite).
        env = ray_env(RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S="60", **(env or {}))
        port, dashboard, client = ray_start(head, temp_dirs[0], env)
        ray_start(second, temp_dirs[1], env)
        cluster = TwoNodeCluster(
            f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}", f"ray://127.0.0.1:{client}", temp_dirs
        )
        # `ray start` of the second node returns before the GCS lists it alive
        wait_until(
            lambda: len([n for n in cluster.nodes() if n["state"] == "ALIVE"]) >= 2,
            timeout_s=60,
            what="the second node joined",
            detail=cluster.nodes,
            poll_s=0.2,
        )
        yield cluster
    finally:
        stop_ray_processes(temp_dirs)
        for d in temp_dirs:
            shutil.rmtree(d, ignore_errors=True)


def node_owner(temp_dir: str) -> str:
    """The ``leaks.OWNER_ENV`` value of every process of the node with this temp dir (``ray_start`` sets it)."""
    return f"cluster:{temp_dir}"


def kill_node(*temp_dirs: str) -> set[int]:
    """SIGKILL every process of the node(s) with these temp dirs, and their children, at once: a lost machine.

    A node's processes are those started with its owner mark in their environment (``node_owner``: Ray's
    daemons, workers, agents, job drivers and the Ray Client servers, which name no temp dir), or whose
    command line names its temp dir, and their children.
    """
    owners = {node_owner(d) for d in temp_dirs}
    procs = ray_processes()
    mine = {
        pid
        for pid, (_, cmd) in procs.items()
        if pid != os.getpid() and (any(d in cmd for d in temp_dirs) or process_owner(pid) in owners)
    }
    while more := {pid for pid, (ppid, _) in procs.items() if ppid in mine} - mine:
        mine |= more
    for pid in mine:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return mine
