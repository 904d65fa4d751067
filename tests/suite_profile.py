"""Where the suite's wall time goes: a pytest plugin, on when ``SPECTRAL_SUITE_PROFILE=FILE.json`` is set.

    SPECTRAL_SUITE_PROFILE=/tmp/profile.json .venv/bin/python -m pytest -q
    .venv/bin/python tests/suite_profile.py /tmp/profile.json        # the table, slowest first

For every test (set-up, call and teardown together) it records the wall time, the whole machine's CPU
use over it from ``/proc/stat`` (Ray's daemons are not pytest's children, so ``getrusage`` misses them),
and the processes alive after its teardown that were not alive when the session started (by name), so a
test that leaves a Ray process behind shows up at the test that left it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from the first line of /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def process_names() -> dict[int, str]:
    """pid -> a short name (the command line's first 100 characters), for every process but this one."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            if cmd:
                out[int(entry.name)] = cmd[:100]
    return out


class SuiteProfile:
    def __init__(self, path: str):
        self.path = path
        self.started = time.time()
        self.baseline = set(process_names())
        self.rows: list[dict] = []
        self._started: dict[str, tuple[float, tuple[int, int]]] = {}  # by test: under pytest-xdist two run at once

    def pytest_runtest_logstart(self, nodeid, location):
        self._started[nodeid] = time.monotonic(), machine_ticks()

    def pytest_runtest_logfinish(self, nodeid, location):
        busy1, total1 = machine_ticks()
        t0, (busy0, total0) = self._started.pop(nodeid)
        extra = {pid: name for pid, name in process_names().items() if pid not in self.baseline and pid != os.getppid()}
        self.rows.append(
            {
                "test": nodeid,
                "wall_s": round(time.monotonic() - t0, 3),
                "cpu_busy": round((busy1 - busy0) / max(total1 - total0, 1), 3),  # of all cores: 1.0 = all busy
                "alive_after": sorted(set(extra.values())),
            }
        )

    def pytest_sessionfinish(self, session):
        Path(self.path).write_text(
            json.dumps(
                {
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.started)),
                    "wall_s": round(time.time() - self.started, 1),
                    "cpus": os.cpu_count(),
                    "load_average_end": os.getloadavg(),
                    "tests": self.rows,
                },
                indent=1,
            )
        )


def register(config) -> None:
    if path := os.environ.get("SPECTRAL_SUITE_PROFILE"):
        config.pluginmanager.register(SuiteProfile(path), "spectral-suite-profile")


def table(path: str, top: int = 40) -> str:
    data = json.loads(Path(path).read_text())
    rows = sorted(data["tests"], key=lambda r: -r["wall_s"])
    total = sum(r["wall_s"] for r in data["tests"])
    busy = sum(r["wall_s"] * r["cpu_busy"] for r in data["tests"]) / max(total, 1e-9)
    lines = [
        f"{len(rows)} tests, {total:.0f} s of tests ({data['wall_s']:.0f} s wall), CPU busy {busy:.0%}",
        f"{'wall s':>8} {'cpu':>5} {'alive after':>11}  test",
    ]
    for r in rows[:top]:
        lines.append(f"{r['wall_s']:8.1f} {r['cpu_busy']:5.0%} {len(r['alive_after']):11d}  {r['test']}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 40))
