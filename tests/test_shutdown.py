"""``freeze_at_exit``: registered once, it freezes what is alive just before the interpreter's exit collection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("calls", [0, 1, 2])
def test_freeze_at_exit_runs_once_at_exit_and_nothing_before(calls):
    code = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('at exit', gc.get_freeze_count() > 0, file=sys.stderr))  # runs after ours\n"
        "from data_split.shutdown import freeze_at_exit\n"
        f"for _ in range({calls}): freeze_at_exit()\n"
        "print('before exit', gc.get_freeze_count())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["before", "exit", "0"]  # nothing frozen while the process runs
    assert proc.stderr.strip() == f"at exit {calls > 0}"
