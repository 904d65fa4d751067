"""What every benchmark shares: the environment of a private local Ray, starting it, the machine, the results file.

Benchmarks run as modules from the repository root, so this tree is imported, not an installed copy:

    .venv/bin/python -m benchmarks.split_throughput [--quick]
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

# A private local Ray: no usage stats, no auth token file. Set before Ray is imported.
for _key, _value in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def start_ray(**options) -> float:
    """Start a private local Ray (``ray.init`` options added, e.g. ``num_cpus``); return the seconds it took."""
    import ray
    from ray.data import DataContext

    t0 = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False, **options)
    DataContext.get_current().enable_progress_bars = False  # one progress block per dataset otherwise
    return time.perf_counter() - t0


def machine_info() -> dict:
    import numpy
    import pyarrow
    import ray
    import torch

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    mem_kb = next(int(ln.split()[1]) for ln in open("/proc/meminfo") if ln.startswith("MemTotal"))
    return {
        "cpu": cpu, "nproc": len(os.sched_getaffinity(0)), "ram_gib": round(mem_kb / 1024**2, 1),
        "kernel": platform.release(), "python": platform.python_version(), "ray": ray.__version__,
        "torch": torch.__version__, "pyarrow": pyarrow.__version__, "numpy": numpy.__version__,
    }


def write_results(results: dict, out: Path) -> None:
    """Write ``results`` as JSON at ``out`` atomically: a half-written file never looks whole."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(out)
