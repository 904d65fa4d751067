"""The test helpers' `ray start`: a port taken between choice and bind is retried with new ports, a bounded number
of times; any other failure fails at once. (No Ray here: the "command" is a stand-in that fails or succeeds.)"""

from __future__ import annotations

import sys

import pytest

from ray_cluster import START_ATTEMPTS, ray_start

CLASH = "ValueError: Failed to bind to 127.0.0.1:20123 because it's already occupied."


def _commands(outcomes: list[str]):
    """``build()`` for ray_start: one stand-in command per call, printing ``outcome`` and exiting 1 unless "ok"."""
    calls = []

    def build():
        outcome = outcomes[len(calls)]
        calls.append(outcome)
        code = "pass" if outcome == "ok" else f"import sys; print({outcome!r}); sys.exit(1)"
        return [sys.executable, "-c", code], len(calls)  # the "ports": which attempt this was

    return build, calls


def test_a_port_clash_is_retried_with_new_ports(tmp_path):
    build, calls = _commands([CLASH, CLASH, "ok"])
    assert ray_start(build, str(tmp_path), env={}) == 3  # the third attempt's ports
    assert len(calls) == 3


def test_retries_are_bounded_and_other_failures_fail_at_once(tmp_path):
    build, calls = _commands([CLASH] * START_ATTEMPTS)
    with pytest.raises(AssertionError, match=f"attempt {START_ATTEMPTS} of {START_ATTEMPTS}"):
        ray_start(build, str(tmp_path), env={})
    build, calls = _commands(["RuntimeError: no such option --num-cpuz", "ok"])
    with pytest.raises(AssertionError, match="attempt 1 of"):
        ray_start(build, str(tmp_path), env={})
    assert len(calls) == 1
