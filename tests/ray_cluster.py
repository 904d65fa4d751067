"""Local Ray clusters for tests: `ray start` on this machine with private ports and temp dirs.

``ray stop`` stops every Ray on the machine (the session's own ``ray.init`` cluster included), so the
tests stop their clusters by killing only the processes that carry their temp dir, and children.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from conftest import free_port

BIN = Path(sys.executable).parent
AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


def ray_env(**extra: str) -> dict:
    """The environment of `ray start` / `ray job submit`: no token auth, no usage stats, no AWS keys."""
    env = {k: v for k, v in os.environ.items() if k not in AWS_KEYS and k != "RAY_ADDRESS"}
    return {**env, "PATH": f"{BIN}:{env['PATH']}", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", **extra}


def node_ports() -> list[str]:
    """Per-node ports that default to fixed numbers (two nodes on one machine, or another test's node, would clash)."""
    names = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
             "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port")
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


def stop_ray_processes(temp_dirs: list[str], grace_s: float = 5.0) -> None:
    """Stop the Ray processes that belong to these temp dirs, and their children (workers, agents, jobs).

    Ray's own processes carry their temp dir in their command line (``--temp-dir``, session, log and
    socket paths); workers are the raylet's children. Nothing else on the machine is touched.
    """
    procs = ray_processes()
    mine = {pid for pid, (_, cmd) in procs.items() if any(d in cmd for d in temp_dirs) and pid != os.getpid()}
    while True:  # add descendants
        more = {pid for pid, (ppid, _) in procs.items() if ppid in mine} - mine
        if not more:
            break
        mine |= more
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in mine:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            mine = {pid for pid in mine if Path(f"/proc/{pid}").exists() and not _zombie(pid)}
            if not mine:
                return
            time.sleep(0.2)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True
