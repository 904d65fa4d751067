"""Ray Tune for spectral tensor networks: the ensemble-weight search and hyperparameter sweeps.

    from tune import tune_ensemble_weights, fit_exact_weights, run_sweep
    tuned = tune_ensemble_weights(cfg, storage)     # EnsembleResult, method "tuned" (also writes ensemble/exact.json)
    exact = fit_exact_weights(val.logits, val.y)    # ExactFit: convex weights minimising validation NLL
    sweep = run_sweep(cfg)                          # SweepResult: table, best config YAML

Names load lazily: ``orchestrator.config`` imports ``tune.config`` and must not pull in Ray Tune.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TuneConfig": "tune.config", "SweepConfig": "tune.config",
    "ExactFit": "tune.exact", "fit_exact_weights": "tune.exact",
    "tune_ensemble_weights": "tune.weights", "search_weights": "tune.weights", "WeightSearch": "tune.weights",
    "run_sweep": "tune.sweep", "SweepResult": "tune.sweep", "SweepError": "tune.sweep",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tune' has no attribute {name!r}")
