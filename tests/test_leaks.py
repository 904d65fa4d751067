"""The suite's own leak check (tests/leaks.py): it finds what a test left, and only that."""

from __future__ import annotations

import subprocess

import leaks


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "600"])


def test_a_process_left_by_a_test_is_stray_and_a_shared_fixtures_is_not():
    check = leaks.LeakCheck()
    mine = _sleeper()
    with leaks.owned_by("shared-thing"):
        shared = _sleeper()
    try:
        found = leaks.session_processes()
        assert found[mine.pid][0] == "test" and found[shared.pid][0] == "shared-thing"
        assert "sleep 600 (started by test)" in check._stray()[mine.pid]
        assert shared.pid in check._stray()  # its fixture is not up: a leak as well
        check.hold("shared-thing")
        assert shared.pid not in check._stray() and mine.pid in check._stray()
        check.release("shared-thing")
        assert shared.pid in check._stray()
    finally:
        for proc in (mine, shared):
            proc.kill()
            proc.wait()
    assert not {mine.pid, shared.pid} & set(leaks.session_processes())  # reaped: nothing left for the real check


def test_processes_of_other_sessions_are_not_ours():
    other = subprocess.Popen(["sleep", "600"], env={leaks.SESSION_ENV: "another-session", "PATH": "/usr/bin:/bin"})
    try:
        assert other.pid not in leaks.session_processes()
    finally:
        other.kill()
        other.wait()
