"""Ray Tune for spectral tensor networks: the ensemble-weight search and hyperparameter sweeps.

Plain inputs, no orchestrator (docs/design.md, "Layering"): the searches take logits and labels,
a config dataclass and the run's storage; ``orchestrator.weights`` and ``orchestrator.sweep`` drive them.

    from tune import fit_exact_weights, search_weights
    exact = fit_exact_weights(val_logits, val_y)               # ExactFit: convex weights minimising val NLL
    search = search_weights(val_logits, val_y, tune_cfg, storage)  # WeightSearch: Ray Tune (Optuna TPE)

Ray itself is imported inside the functions that run a search, so importing ``tune`` is cheap.
"""

from tune.config import SweepConfig, TuneConfig
from tune.exact import ExactFit, fit_exact_weights
from tune.scoring import COMPUTED_RULES, WEIGHT_RULES, ensemble_logits, nll_and_accuracy, score, weight_rule
from tune.sweep import SweepError
from tune.weights import WeightSearch, WeightSearchError, search_weights

__all__ = [
    "COMPUTED_RULES",
    "ExactFit",
    "SweepConfig",
    "SweepError",
    "TuneConfig",
    "WEIGHT_RULES",
    "WeightSearch",
    "WeightSearchError",
    "ensemble_logits",
    "fit_exact_weights",
    "nll_and_accuracy",
    "score",
    "search_weights",
    "weight_rule",
]
