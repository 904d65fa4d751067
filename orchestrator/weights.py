"""The ``tuned`` ensemble weights of a run: read the branches' outputs, search, compare with the exact fit.

``tune_ensemble_weights(cfg, storage)`` fits the exact reference (``tune.exact``: the convex
weights minimising validation NLL), writes it as ``ensemble/exact.json``, runs the Ray Tune
search (``tune.weights``, seeded with the uniform and geometric rules) and records how close the
search came to the exact fit. The caller writes the returned result (``write_weights``), as
``orchestrator.api.ensemble`` does. docs/design.md section 1, step 4.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from data_split.layout import load_manifest
from data_split.storage import RunStorage
from orchestrator._ray import init_ray
from orchestrator.config import SpectralConfig
from orchestrator.ensemble import (
    EnsembleInputError,
    EnsembleResult,
    evaluate_weights,
    load_branch_outputs,
    read_train_losses,
    write_weights,
)
from tune.exact import ExactFit, fit_exact_weights
from tune.scoring import weight_rule
from tune.weights import search_weights

log = logging.getLogger(__name__)

ACC_TOLERANCE_POINTS = 0.2  # the search should land within this many accuracy points of the exact fit ...
NLL_TOLERANCE_PCT = 2.0  # ... and within this many percent of its validation NLL


def compare_to_exact(tuned: EnsembleResult, exact: EnsembleResult) -> dict:
    """How far the search landed from the exact fit on validation, and whether within tolerance."""
    nll_pct = 100.0 * (tuned.val["nll"] - exact.val["nll"]) / exact.val["nll"]
    acc_points = 100.0 * (tuned.val["acc"] - exact.val["acc"])
    return {
        "val_nll_gap_pct": nll_pct,
        "val_acc_gap_points": acc_points,
        "within_tolerance": bool(nll_pct <= NLL_TOLERANCE_PCT and abs(acc_points) <= ACC_TOLERANCE_POINTS),
    }


def rule_seeds(storage: RunStorage, K: int, p: float, skip: Sequence[int] = ()) -> dict[str, np.ndarray]:
    """Uniform weights, and geometric ones when the branches' training losses are on storage (all but ``skip``)."""
    seeds = {"uniform": weight_rule("uniform", np.zeros(K - len(set(skip))))}
    try:
        seeds["geometric"] = weight_rule("geometric", read_train_losses(storage, K, skip), p)
    except EnsembleInputError as e:
        log.info("no geometric seed for the search: %s", e)
    return seeds


def tune_ensemble_weights(cfg: SpectralConfig, storage: RunStorage, skip: Sequence[int] = ()) -> EnsembleResult:
    """Search the weights with Ray Tune, fit the exact reference; write ``ensemble/exact.json``; return "tuned".

    ``cfg`` is the run's ``SpectralConfig`` (``tune``, ``ensemble.p`` and ``ray`` are used); ``skip``:
    branches left out (diverged).
    """
    K = load_manifest(storage).K
    val, test = (
        load_branch_outputs(storage, K, "val", skip),
        load_branch_outputs(storage, K, "test", skip),
    )  # fail before Ray
    if len(val.y) == 0:
        raise EnsembleInputError(
            f"{storage.url()} has no validation rows to tune the weights on (split.val_fraction is 0?)"
        )
    fit: ExactFit = fit_exact_weights(val.logits, val.y)
    exact = evaluate_weights("exact", fit.weights, val, test, fit.to_extra())
    write_weights(storage, exact, chosen=False)

    init_ray(cfg.ray)
    search = search_weights(val.logits, val.y, cfg.tune, storage, seeds=rule_seeds(storage, K, cfg.ensemble.p, skip))
    extra = {
        "search": "ray-tune optuna-tpe (multivariate), simplex u -> -log(1-u) normalised",
        "num_samples": cfg.tune.num_samples,
        "candidates_per_trial": cfg.tune.candidates_per_trial,
        "trials": search.trials,
        "errored_trials": search.errored,
        "tune_seconds": search.seconds,
        "trials_per_s": search.trials_per_s,
        "experiment": search.experiment,
    }
    tuned = evaluate_weights("tuned", search.weights, val, test, extra)
    closeness = compare_to_exact(tuned, exact)
    tuned.extra.update({"exact_val_nll": exact.val["nll"], "exact_val_acc": exact.val["acc"], **closeness})
    (log.info if closeness["within_tolerance"] else log.warning)(
        "tuned vs exact fit on validation: NLL %+.2f%% (tolerance %.1f%%), accuracy %+.2f points (tolerance %.1f)%s",
        closeness["val_nll_gap_pct"],
        NLL_TOLERANCE_PCT,
        closeness["val_acc_gap_points"],
        ACC_TOLERANCE_POINTS,
        "" if closeness["within_tolerance"] else ": raise tune.num_samples or tune.candidates_per_trial",
    )
    return tuned
