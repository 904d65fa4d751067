"""Nothing a test starts outlives it: the suite fails naming the test that left a process or an actor behind.

Every process this test session starts carries ``SPECTRAL_TEST_SESSION=<id>`` in its environment (set in
``conftest`` before anything starts, so Ray's daemons and workers, CLIs, jobs and test clusters inherit it;
a cluster started over SSH is given it in its start command). After each test's teardown the checker lists
the live processes that carry this session's id and belong to no live shared fixture. A fixture that is
shared on purpose (the session's local Ray, the two-node cluster) marks the processes it starts with
``SPECTRAL_TEST_OWNER=<name>`` (``owned_by``) and ``release``s the name when it stops them; from then on
anything of that name still alive is a leak too.

Inside the shared local Ray, a test must not leave actors behind either: after each test the session
Ray's processes may be idle workers or Ray Data's per-cluster singletons only (``SHARED_ACTORS``). What
the set-up of a fixture broader than one test started (a module's Serve application) belongs to that
fixture until it is finalized.

A process that is on its way out (a CLI's Ray shutting down) gets ``GRACE_S`` to go; whatever is still
there then is killed, so that it cannot slow the tests after it, and recorded. At the end of the session
the leaks are printed, each under the test that left it, and the session fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

SESSION_ENV = "SPECTRAL_TEST_SESSION"
OWNER_ENV = "SPECTRAL_TEST_OWNER"
GRACE_S = 15.0  # a process still exiting after its test: a CLI's local Ray takes a few seconds on 2 cores
# Idle workers, the actors a Ray cluster keeps once Ray Data ran on it (detached singletons of Ray Data's), and
# the progress board a driver keeps for all its trainings (orchestrator.branch_task.board_for_this_driver).
SHARED_ACTORS = (
    "ray::IDLE",
    "ray::_StatsActor",
    "ray::_AutoscalingCoordinatorActor",
    "ray::ActorLocationTracker",
    "ray::ProgressBoard",
)


def mark_session() -> None:
    """Give this process (and so everything it starts from now on) the session's id.

    A pytest-xdist worker is a session of its own: its id extends the controller's, so that one worker's
    check never counts the other worker's processes (nor the workers themselves) as its own.
    """
    os.environ.setdefault(SESSION_ENV, uuid.uuid4().hex)
    if (worker := os.environ.get("PYTEST_XDIST_WORKER")) and not os.environ[SESSION_ENV].endswith(f"-{worker}"):
        os.environ[SESSION_ENV] += f"-{worker}"
    os.environ.setdefault(OWNER_ENV, "test")


@contextlib.contextmanager
def owned_by(name: str):
    """Processes started inside this block belong to the shared fixture ``name`` (not to the current test)."""
    before = os.environ[OWNER_ENV]
    os.environ[OWNER_ENV] = name
    try:
        yield
    finally:
        os.environ[OWNER_ENV] = before


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def process_owner(pid: int) -> str | None:
    """The ``OWNER_ENV`` a process was started with (None: not one of this session's, or gone)."""
    env = _environ(pid)
    return env.get(OWNER_ENV) if env.get(SESSION_ENV) == os.environ.get(SESSION_ENV) else None


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def session_processes() -> dict[int, tuple[str, str]]:
    """pid -> (owner, command line) of every live process of this test session but this one."""
    session, me = os.environ[SESSION_ENV], os.getpid()
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        env = _environ(int(entry.name))
        if env.get(SESSION_ENV) == session and _alive(int(entry.name)):
            out[int(entry.name)] = (env.get(OWNER_ENV, "test"), _cmdline(int(entry.name)))
    return out


class LeakCheck:
    """The pytest plugin: after each test, what it left; at the end, fail the session if anything."""

    def __init__(self) -> None:
        self.live_owners: set[str] = set()  # shared fixtures up right now
        self.fixture_pids: dict[str, set[int]] = {}  # a module/class/session fixture -> what its set-up started
        self.leaks: dict[str, list[str]] = {}  # test -> what it left

    def hold(self, name: str) -> None:
        self.live_owners.add(name)

    def release(self, name: str) -> None:
        self.live_owners.discard(name)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        """What a fixture broader than one test starts (a module's Serve app: actors in the session's Ray) is
        that fixture's until it is finalized."""
        if fixturedef.scope == "function":
            yield
            return
        before = set(self._stray())
        yield
        self.fixture_pids[fixturedef.argname] = set(self._stray()) - before

    def pytest_fixture_post_finalizer(self, fixturedef, request):
        if fixturedef.scope != "function":
            self.fixture_pids.pop(fixturedef.argname, None)

    def _stray(self) -> dict[int, str]:
        stray = {}
        shared = set().union(*self.fixture_pids.values())
        for pid, (owner, cmd) in session_processes().items():
            if pid in shared:
                continue
            if owner not in self.live_owners:
                stray[pid] = f"{cmd[:150]} (started by {owner})"
            elif owner == "ray_session" and cmd.startswith("ray::") and not cmd.startswith(SHARED_ACTORS):
                stray[pid] = f"actor {cmd[:150]} in the session's local Ray"
        return stray

    def pytest_runtest_logfinish(self, nodeid, location):
        deadline = time.monotonic() + GRACE_S
        while (stray := self._stray()) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not stray:
            return
        self.leaks[nodeid] = sorted(stray.values())
        for pid in stray:  # an actor's process too: Ray then marks the actor dead
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def pytest_terminal_summary(self, terminalreporter):
        if not self.leaks:
            return
        terminalreporter.section("processes or actors left behind by tests", red=True)
        for test, what in self.leaks.items():
            terminalreporter.line(test)
            for line in what:
                terminalreporter.line(f"    {line}")

    def pytest_sessionfinish(self, session, exitstatus):
        if self.leaks and session.exitstatus == 0:
            session.exitstatus = 1
