"""Orchestration of K communication-free branches on Ray: config, actors, ensemble, report, CLI, API.

The API's names are loaded on first use (PEP 562): a Ray worker that imports one module of the package
(a branch actor, a DDP worker) then loads what that module needs, not the API, the report's plotting
and Tune, which took ~1 s of CPU at every actor start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "RunResult": "orchestrator.api", "baseline": "orchestrator.api", "evaluate": "orchestrator.api",
    "run": "orchestrator.api", "split": "orchestrator.api", "train": "orchestrator.api",
    "SpectralConfig": "orchestrator.config", "load_config": "orchestrator.config",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from orchestrator.api import RunResult, baseline, evaluate, run, split, train
    from orchestrator.config import SpectralConfig, load_config


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
