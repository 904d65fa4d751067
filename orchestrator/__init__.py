"""Orchestration of K communication-free branches on Ray: config, branch tasks, ensemble, report, CLI, API.

The API's names are loaded on first use (PEP 562): a Ray worker that imports one module of the package
(a branch task, a DDP worker) then loads what that module needs, not the API, the report's plotting
and Tune, which took ~1 s of CPU at every branch process start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from data_split.lazy import lazy_exports

_EXPORTS = {
    "RunResult": "orchestrator.api",
    "baseline": "orchestrator.api",
    "evaluate": "orchestrator.api",
    "run": "orchestrator.api",
    "split": "orchestrator.api",
    "train": "orchestrator.api",
    "SpectralConfig": "orchestrator.config",
    "load_config": "orchestrator.config",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from orchestrator.api import RunResult, baseline, evaluate, run, split, train
    from orchestrator.config import SpectralConfig, load_config


__getattr__ = lazy_exports(__name__, _EXPORTS)
