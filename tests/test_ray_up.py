"""`ray up` for real: the on-premises example as a one-node cluster on this machine, over SSH on loopback.

An sshd of the test's own (Debian's openssh-server, run as root on 127.0.0.1 with a host key and a
client key made here, no system config) is the "machine"; ``configs/cluster_local.yaml`` is brought up
on it with only the machine-specific fields changed, a small run goes in with ``ray job submit``, its
outputs are checked, then ``ray down``.

What the test changes in the example, and why:
- ``provider``/``auth``: head 127.0.0.1, no workers, root with the test's key; Ray's SSH has no port
  option, so it reaches the test's sshd through ``ssh_proxy_command: nc 127.0.0.1 <port>``.
- ``file_mounts`` go to a folder of the test instead of ``~/`` (still synced with rsync over SSH), and
  ``setup_commands`` only check they arrived: the node is this machine, whose venv already holds the
  project (installing would download torch). Ray is called as this venv's ``ray``, and its ``bin`` is
  put on the PATH of Ray's processes (the example puts it in ``~/.bashrc`` instead; the test leaves
  root's dotfiles alone) so that ``spectral`` resolves for the job.
- no ``ray stop`` in the start commands, and its own ports and temp dir: ``ray stop`` stops every Ray on
  the machine, other test sessions' included. For the same reason the test runs only when a login shell
  here has no ``ray`` on its PATH: ``ray down`` runs a bare ``ray stop`` over SSH. It then releases
  the node, and the test stops its cluster's processes itself (found by their temp dir).

Skipped, with the reason, when sshd/ssh/ssh-keygen/nc/rsync are missing (``scripts/setup.sh --test``
installs them), when not root, or when the sshd cannot start.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import free_port
from data_split import RunStorage
from leaks import OWNER_ENV, SESSION_ENV
from ray_cluster import NODE_TIMEOUT, node_owner, node_ports, ray_env, stop_ray_processes

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXAMPLE = REPO / "configs" / "cluster_local.yaml"
SSHD = "/usr/sbin/sshd"
SSH_OPTS = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "BatchMode=yes",
    "-o",
    "LogLevel=ERROR",
]


def _missing_tools() -> list[str]:
    tools = {"sshd": SSHD if os.access(SSHD, os.X_OK) else shutil.which("sshd")}
    tools.update({name: shutil.which(name) for name in ("ssh", "ssh-keygen", "nc", "rsync")})
    return [name for name, path in tools.items() if not path]


class LoopbackSSH:
    """An sshd on 127.0.0.1:<port> that lets root in with one key; nothing read from /etc/ssh."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.key, host_key = root / "client_key", root / "host_key"
        for path in (self.key, host_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
        (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        cmd = [
            SSHD,
            "-D",
            "-e",
            "-f",
            "/dev/null",
            "-p",
            str(self.port),
            "-h",
            str(host_key),
            "-o",
            "ListenAddress=127.0.0.1",
            "-o",
            f"AuthorizedKeysFile={root / 'authorized_keys'}",
            "-o",
            "PermitRootLogin=prohibit-password",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "KbdInteractiveAuthentication=no",
            "-o",
            "UsePAM=no",
            "-o",
            f"PidFile={root / 'sshd.pid'}",
            "-o",
            "MaxSessions=50",
            "-o",
            "MaxStartups=50",
            "-o",
            "StrictModes=no",
        ]  # the key lies under /tmp (1777): StrictModes refuses that
        self.log = open(root / "sshd.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def run(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = ["ssh", *SSH_OPTS, "-i", str(self.key), "-p", str(self.port), "root@127.0.0.1", command]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def wait_ready(self, timeout_s: float = 20) -> str | None:
        """None when a login works, else why not."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.run("true", timeout=10).returncode == 0:
                return None
            time.sleep(0.5)
        self.log.flush()
        return f"sshd on 127.0.0.1:{self.port} did not let root in: {(self.root / 'sshd.log').read_text()[-500:]}"

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # sshd and its per-connection children
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def loopback_ssh():
    if missing := _missing_tools():
        pytest.skip(
            f"needs {', '.join(missing)} (scripts/setup.sh --test installs openssh-server, rsync, netcat-openbsd)"
        )
    if os.geteuid() != 0:
        pytest.skip("sshd must run as root to let the test log in as root over SSH")
    root = Path(tempfile.mkdtemp(prefix="stn-ssh-", dir="/tmp"))  # short: Ray's sockets live under it too
    ssh = LoopbackSSH(root)
    try:
        if reason := ssh.wait_ready():
            pytest.skip(reason)
        found = ssh.run("command -v ray || true").stdout.strip()
        if found:
            pytest.skip(
                f"a login shell here finds {found}: `ray down` would run it as `ray stop`, "
                "which stops every Ray process on this machine"
            )
        yield ssh
    finally:
        ssh.close()
        shutil.rmtree(root, ignore_errors=True)


def cluster_config(ssh: LoopbackSSH, name: str, gcs_port: int, dashboard_port: int) -> dict:
    """The on-premises example with only the machine-specific fields changed (see the module docstring)."""
    config = yaml.safe_load(EXAMPLE.read_text())
    node_dir = ssh.root / "node"
    config["cluster_name"] = name
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["auth"] = {
        "ssh_user": "root",
        "ssh_private_key": str(ssh.key),
        "ssh_proxy_command": f"nc 127.0.0.1 {ssh.port}",
    }
    config["file_mounts"] = {
        remote.replace("~/", f"{node_dir}/"): local for remote, local in config["file_mounts"].items()
    }
    project = node_dir / "spectral-tensor-orchestrator"
    config["setup_commands"] = [f"test -f {project}/pyproject.toml && test -f {project}/orchestrator/cli.py"]
    start = " ".join(
        [
            f"export PATH={BIN}:$PATH RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0",
            # the marks of this test session's processes (tests/leaks.py): an SSH session does not inherit them
            f"{SESSION_ENV}={os.environ[SESSION_ENV]} {OWNER_ENV}={node_owner(str(ssh.root / 'ray'))};",
            f"{BIN / 'ray'} start --head --port={gcs_port} --autoscaling-config=~/ray_bootstrap_config.yaml",
            "--num-cpus=2 --num-gpus=0 --node-ip-address=127.0.0.1 --object-store-memory=150000000",
            f"--dashboard-host=127.0.0.1 --dashboard-port={dashboard_port} --ray-client-server-port={free_port()}",
            f"--temp-dir={ssh.root / 'ray'} --disable-usage-stats",
            *node_ports(),
        ]
    )
    config["head_start_ray_commands"] = [start]
    config["worker_start_ray_commands"] = []
    return config


def ray_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "ray"), *args], env=ray_env(), capture_output=True, text=True, timeout=timeout, cwd=REPO
    )  # cwd: file_mounts' local paths are relative to the repository


def test_ray_up_job_submit_ray_down(loopback_ssh, tmp_path):
    from ray.autoscaler._private.local.config import get_lock_path, get_state_path

    ssh = loopback_ssh
    name = f"stn-test-{ssh.port}"
    dashboard_port = free_port()
    config_path = tmp_path / "cluster.yaml"
    config_path.write_text(yaml.safe_dump(cluster_config(ssh, name, free_port(), dashboard_port)))
    # `ray up` puts the bootstrap config and key in the head's ~: remove what this test created there.
    bootstrap_files = [Path.home() / f for f in ("ray_bootstrap_config.yaml", "ray_bootstrap_key.pem")]
    preexisting = {p for p in bootstrap_files if p.exists()}
    try:
        up = ray_cli("up", "-y", "--no-config-cache", "--disable-usage-stats", str(config_path))
        if up.returncode != 0 and NODE_TIMEOUT.search(up.stdout + up.stderr):  # Ray's fixed 30 s, missed under load
            stop_ray_processes([str(ssh.root / "ray")])  # what the head's failed start left; then once more
            up = ray_cli("up", "-y", "--no-config-cache", "--disable-usage-stats", str(config_path))
        assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-2000:]
        assert (ssh.root / "node" / "spectral-tensor-orchestrator" / "orchestrator" / "cli.py").exists()  # rsynced

        job = tmp_path / "job.yaml"
        job.write_text(
            yaml.safe_dump(
                {
                    "source": {
                        "name": "synthetic",
                        "synthetic": {"train": 300, "test": 100, "height": 8, "width": 8, "classes": 4},
                    },
                    "split": {"rows": 1, "cols": 2},  # K = 2 at 1 CPU each: one wave on the 2-CPU node
                    "model": {"name": "fc4"},
                    "train": {"epochs": 1},
                    "resources": {"cpus_per_branch": 1},
                    "ensemble": {"weights": "geometric"},
                }
            )
        )
        run_uri = tmp_path / "run"
        submit = ray_cli(
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{dashboard_port}",
            "--working-dir",
            str(REPO),
            "--",
            "spectral",
            "run",
            "--config",
            str(job),
            "--storage",
            str(run_uri),
            timeout=900,
        )
        assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-2000:]
        assert "succeeded" in submit.stdout

        storage = RunStorage(str(run_uri))
        report = storage.read_json("report/report.json")
        assert len(report["branches"]) == 2
        assert storage.read_json("ensemble/weights.json")["method"] == "geometric"
        with urllib.request.urlopen(f"http://127.0.0.1:{dashboard_port}/api/v0/nodes", timeout=30) as r:
            (node,) = json.load(r)["data"]["result"]["result"]  # the one node `ray up` started
        for k in range(2):
            assert storage.read_json(f"branches/{k}/placement.json")["placement"]["node_id"] == node["node_id"]

        down = ray_cli("down", "-y", str(config_path), timeout=300)
        assert down.returncode == 0, down.stdout[-4000:] + down.stderr[-2000:]
        state = json.loads(Path(get_state_path(name)).read_text())
        assert state["127.0.0.1"]["state"] == "terminated", state  # the launcher released the node
    finally:
        stop_ray_processes([str(ssh.root / "ray")])
        for path in (get_state_path(name), get_lock_path(name), *[p for p in bootstrap_files if p not in preexisting]):
            Path(path).unlink(missing_ok=True)
