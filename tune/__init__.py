"""Ray Tune for spectral tensor networks: the ensemble-weight search and hyperparameter sweeps.

Plain inputs, no orchestrator (docs/design.md, "Layering"): the searches take logits and labels,
a config dataclass and the run's storage; ``orchestrator.weights`` and ``orchestrator.sweep`` drive them.

    from tune import fit_exact_weights, search_weights
    exact = fit_exact_weights(val_logits, val_y)               # ExactFit: convex weights minimising val NLL
    search = search_weights(val_logits, val_y, tune_cfg, storage)  # WeightSearch: Ray Tune (Optuna TPE)

Names load on first use (PEP 562), and Ray inside the functions that run a search: importing ``tune.config``
(as ``orchestrator.config`` does) loads neither scipy nor Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from data_split.lazy import lazy_exports

_EXPORTS = {
    "SweepConfig": "tune.config",
    "TuneConfig": "tune.config",
    "ExactFit": "tune.exact",
    "fit_exact_weights": "tune.exact",
    "COMPUTED_RULES": "tune.scoring",
    "WEIGHT_RULES": "tune.scoring",
    "ensemble_logits": "tune.scoring",
    "nll_and_accuracy": "tune.scoring",
    "score": "tune.scoring",
    "weight_rule": "tune.scoring",
    "SweepError": "tune.sweep",
    "WeightSearch": "tune.weights",
    "WeightSearchError": "tune.weights",
    "search_weights": "tune.weights",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from tune.config import SweepConfig, TuneConfig
    from tune.exact import ExactFit, fit_exact_weights
    from tune.scoring import COMPUTED_RULES, WEIGHT_RULES, ensemble_logits, nll_and_accuracy, score, weight_rule
    from tune.sweep import SweepError
    from tune.weights import WeightSearch, WeightSearchError, search_weights


__getattr__ = lazy_exports(__name__, _EXPORTS)
