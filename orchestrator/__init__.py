"""Orchestration of K communication-free branches on Ray: config, actors, ensemble, report, CLI, API."""

from orchestrator.api import RunResult, baseline, evaluate, run, split, train
from orchestrator.config import SpectralConfig, load_config

__all__ = ["RunResult", "SpectralConfig", "baseline", "evaluate", "load_config", "run", "split", "train"]
