"""What every benchmark records beside its numbers (the machine), and how it writes them."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


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
