"""branches._faults, the test-only fault injection: off without its folder, a hold waits for its release, an exit
request is taken by one process once."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from branches import _faults
from holds import Exit, Hold

REPO = Path(__file__).resolve().parents[1]


def test_nothing_happens_without_a_matching_request(monkeypatch, tmp_path):
    monkeypatch.delenv(_faults.ENV)
    _faults.after_epoch("runs/x", 0, 1)  # no folder: returns at once
    monkeypatch.setenv(_faults.ENV, str(tmp_path))
    with Hold("s3://bucket/other", epoch=1), Hold("runs/x", epoch=2), Hold("runs/x", epoch=1, branch=3):
        _faults.after_epoch("runs/x", 0, 1)  # another run, another epoch, another branch: not held


def test_a_hold_waits_until_released():
    with Hold("runs/held", epoch=1, branch=0) as hold:
        waiting = threading.Thread(target=_faults.after_epoch, args=("runs/held/run", 0, 1))
        waiting.start()
        (marker,) = hold.wait_reached(timeout_s=10)
        assert marker["k"] == 0 and marker["epoch"] == 1 and waiting.is_alive()
    waiting.join(timeout=10)
    assert not waiting.is_alive()


def test_an_exit_request_ends_one_process_once():
    code = "import sys; from branches import _faults; _faults.after_epoch(sys.argv[1], 1, 2); print('went on')"
    run = lambda: subprocess.run([sys.executable, "-c", code, "runs/exit"], cwd=REPO, capture_output=True, text=True)  # noqa: E731
    with Exit("runs/exit", epoch=2, branch=1) as request:
        first, second = run(), run()
        assert (first.returncode, first.stdout) == (1, "")  # exited as a killed process would
        assert (second.returncode, second.stdout) == (0, "went on\n")  # the request was taken
        assert [m["k"] for m in request.markers()] == [1]
