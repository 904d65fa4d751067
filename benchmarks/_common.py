"""What every benchmark shares: a private local Ray, the machine, and the one results record.

Benchmarks run as modules from the repository root, so this tree is imported, not an installed copy:

    .venv/bin/python -m benchmarks.split_throughput [--quick]

Every benchmark starts with ``begin()`` and ends with ``record()``, which writes one schema
(``SCHEMA``) to ``benchmarks/results/<name>.json``::

    {"schema": 1, "benchmark": "split_throughput", "command": ".venv/bin/python -m benchmarks.split_throughput",
     "started": "2026-11-27T12:00:15Z", "seconds": 238.5, "machine": {"cpu": ..., "nproc": 2, ...},
     "load_average": {"before": [1m, 5m, 15m], "after": [...]}, "git": {"commit": ..., "dirty": false},
     "results": {...what the benchmark measured...}}

``load()`` reads a results file in that schema, also one written before it (their fields are mapped
mechanically: the numbers are untouched); ``docs/benchmarks.md`` is generated from them
(``scripts/benchmarks_page.py``).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# A private local Ray: no usage stats, no auth token file. Set before Ray is imported.
for _key, _value in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SCHEMA = 1
RECORD_KEYS = ("schema", "benchmark", "command", "started", "seconds", "machine", "load_average", "git", "results")


def start_ray(**options) -> float:
    """Start a private local Ray (``ray.init`` options added, e.g. ``num_cpus``); return the seconds it took."""
    import ray
    from ray.data import DataContext

    t0 = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False, **options)
    DataContext.get_current().enable_progress_bars = False  # one progress block per dataset otherwise
    return time.perf_counter() - t0


def upload_folder(local: Path, endpoint: str, bucket: str, prefix: str) -> str:
    """Every file under ``local`` copied to ``s3://<bucket>/<prefix>/`` at ``endpoint`` (the bucket exists);
    returns that URI."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    for p in local.rglob("*"):
        if p.is_file():
            client.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(local)}")
    return f"s3://{bucket}/{prefix}"


def machine_info() -> dict:
    import numpy
    import pyarrow
    import ray
    import torch

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    mem_kb = next(int(ln.split()[1]) for ln in open("/proc/meminfo") if ln.startswith("MemTotal"))
    return {
        "cpu": cpu,
        "nproc": len(os.sched_getaffinity(0)),
        "ram_gib": round(mem_kb / 1024**2, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "torch": torch.__version__,
        "pyarrow": pyarrow.__version__,
        "numpy": numpy.__version__,
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def git_state() -> dict:
    """The commit measured, and whether the tree had uncommitted changes (None outside a git checkout)."""

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    commit = git("rev-parse", "HEAD")
    return {"commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None}


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass
class Begun:
    """What ``record()`` needs from a benchmark's start: its name, command line, clock and load."""

    benchmark: str
    command: str
    started: float = field(default_factory=time.time)
    load_before: list[float] = field(default_factory=load_average)


def begin(benchmark: str, argv: list[str] | None = None) -> Begun:
    """Call first in ``main``: ``benchmark`` is the module's name under ``benchmarks``; ``argv`` its arguments
    (default: this process's)."""
    args = sys.argv[1:] if argv is None else argv
    return Begun(benchmark, " ".join([".venv/bin/python", "-m", f"benchmarks.{benchmark}", *args]))


def record(begun: Begun, results: dict, out: Path | None = None, *, machine: dict | None = None) -> dict:
    """The benchmark's record in the one schema; written atomically to ``out`` (None: not written)."""
    doc = {
        "schema": SCHEMA,
        "benchmark": begun.benchmark,
        "command": begun.command,
        "started": iso(begun.started),
        "seconds": round(time.time() - begun.started, 1),
        "machine": machine or machine_info(),
        "load_average": {"before": begun.load_before, "after": load_average()},
        "git": git_state(),
        "results": results,
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(out)  # a half-written file never looks whole
    return doc


# -- results written before the schema ------------------------------------------------------------------
LOAD_FIELDS = (  # (before, after) as the older writers spelled them, at the top level or in "machine"; the first found
    ("load_average_start", "load_average_end"),
    ("load_avg_start", "load_avg_end"),
    ("load_before", "load_after"),
    ("loadavg_before", "loadavg_after"),
    ("loadavg_1m_before", "loadavg_1m_after"),
)


def upgrade(old: dict, benchmark: str) -> dict:
    """A record of the schema from one written before it: the same numbers, the metadata in its fields.

    Unknown then: the commit measured (``git`` is None) and, where a writer kept none, the load after.
    Several invocations merged into one file (their ``date`` and ``machine`` lists) keep the first
    as the record's and the lists in the results.
    """
    rest = dict(old)
    machine = rest.pop("machine", {})
    started = rest.pop("started", None) or rest.pop("date", None)
    results = {}
    if isinstance(machine, list):
        results["machines"], machine = machine, machine[0]
    if isinstance(started, list):
        results["dates"], started = started, started[0]
    machine = dict(machine)
    load = {"before": None, "after": None}
    for before, after in LOAD_FIELDS:
        for where in (rest, machine):
            if before in where:
                value = where.pop(before)
                load["before"] = load["before"] or value
            if after in where:
                value = where.pop(after)
                load["after"] = load["after"] or value
    if isinstance(rest.get("load_average"), dict):
        load.update(rest.pop("load_average"))
    load = {k: [v] if isinstance(v, (int, float)) else v for k, v in load.items()}  # a 1-minute value alone
    rest.pop("benchmark", None)
    return {
        "schema": SCHEMA,
        "benchmark": benchmark,
        "command": rest.pop("command", None),
        "started": started,
        "seconds": rest.pop("wall_s", None),
        "machine": machine,
        "load_average": load,
        "git": None,
        "results": {**results, **rest},
    }


def load(path: Path) -> dict:
    """A results file in the schema, whichever writer wrote it."""
    doc = json.loads(Path(path).read_text())
    return doc if doc.get("schema") == SCHEMA else upgrade(doc, Path(path).stem)
