"""The Ray Tune search of ensemble weights on the validation logits (``ensemble.weights: tuned``).

A Tuner runs ``tune.num_samples`` trials. Optuna's TPE (through ``OptunaSearch``) proposes
``u`` in the unit cube, mapped onto the simplex (``tune._simplex``), so every proposal is a valid
convex weight vector. A trial spends ``candidates_per_trial`` scored weight vectors on a
derivative-free local search from the proposal (batched Dirichlet rounds, ``tune._simplex``) and
reports the best point: ``nll`` (the metric, minimised) and ``acc``; ``candidates_per_trial: 1``
is plain TPE. The logits reach the trials through Ray's object
store once (``tune.with_parameters``), not through files. The first trials evaluate the uniform
and geometric weights, so the search never ends worse than those rules.

``tune_ensemble_weights(cfg, storage)`` also fits the exact reference (``tune.exact``), writes it
as ``ensemble/exact.json`` and records how close the search came to it. Tune's own files go to
``<run>/tune/weights/experiment`` (local or s3://); a new search replaces the previous one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from data_split.shards import load_manifest
from data_split.storage import RunStorage
from orchestrator.ensemble import (
    BranchOutputs,
    EnsembleInputError,
    EnsembleResult,
    evaluate_weights,
    load_branch_outputs,
    read_train_losses,
    weight_rule,
    write_weights,
)
from tune._simplex import local_search, simplex_from_unit, unit_from_simplex
from tune._storage import EXPERIMENT_NAME, tune_location, short_trial_dirname
from tune.config import TuneConfig
from tune.exact import ExactFit, fit_exact_weights

log = logging.getLogger(__name__)

TUNE_DIR = "tune/weights"  # under the run
ACC_TOLERANCE_POINTS = 0.2  # the search should land within this many accuracy points of the exact fit ...
NLL_TOLERANCE_PCT = 2.0  # ... and within this many percent of its validation NLL
MAX_STARTUP_TRIALS = 10  # TPE's random start-up trials (fewer when num_samples is small)


class WeightSearchError(RuntimeError):
    """Every Tune trial failed; the message carries the first trial error."""


@dataclass(frozen=True)
class WeightSearch:
    """The outcome of one Tune search."""

    weights: np.ndarray  # (K,) the best trial's best candidate
    val_nll: float
    val_acc: float
    trials: int
    errored: int
    seconds: float  # wall time of Tuner.fit
    experiment: str  # where Tune stored it
    trial_nll: list[float] = field(default_factory=list)  # per trial, in Tune's trial order

    @property
    def trials_per_s(self) -> float:
        return self.trials / self.seconds if self.seconds > 0 else float("nan")


def param_names(K: int) -> list[str]:
    return [f"u{k:02d}" for k in range(K)]


def _weight_trial(config: dict, *, logits: np.ndarray, y: np.ndarray, candidates: int, seed: int) -> None:
    """One Tune trial: a local search of ``candidates`` points from the proposal; report the best (in a Tune actor)."""
    from ray import tune

    names = param_names(logits.shape[0])
    u = np.array([config[n] for n in names], dtype=np.float64)  # (K,)
    rng = np.random.default_rng([seed, *np.frombuffer(u.tobytes(), dtype=np.uint32).tolist()])  # per proposal
    w, nll, acc, proposal_nll = local_search(simplex_from_unit(u), candidates, logits.astype(np.float64), y, rng)
    tune.report({"nll": nll, "acc": acc, "proposal_nll": proposal_nll, **{f"w{k:02d}": float(v) for k, v in enumerate(w)}})


def search_weights(val: BranchOutputs, cfg: TuneConfig, storage: RunStorage, *,
                   seeds: dict[str, np.ndarray] | None = None) -> WeightSearch:
    """Run the Tuner on ``val`` (logits (K, N, C)); ``seeds`` are weight vectors evaluated first."""
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    K = val.logits.shape[0]
    names = param_names(K)
    points = [dict(zip(names, unit_from_simplex(w).tolist())) for w in (seeds or {}).values()][: cfg.num_samples]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(
        seed=cfg.seed, multivariate=True, n_startup_trials=min(MAX_STARTUP_TRIALS, max(2, cfg.num_samples // 5)))
    storage.remove(TUNE_DIR)  # a new search replaces the last one (its result lives on in ensemble/*.json)
    storage_path, filesystem = tune_location(storage, TUNE_DIR)
    trainable = tune.with_parameters(_weight_trial, logits=val.logits, y=val.y,
                                     candidates=cfg.candidates_per_trial, seed=cfg.seed)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={n: tune.uniform(0.0, 1.0) for n in names},
        tune_config=tune.TuneConfig(
            metric="nll", mode="min", num_samples=cfg.num_samples,
            search_alg=OptunaSearch(sampler=sampler, points_to_evaluate=points or None),
            max_concurrent_trials=cfg.max_concurrent, reuse_actors=True,  # trials are ~ms of work: reuse actors
            trial_dirname_creator=short_trial_dirname,
        ),
        run_config=tune.RunConfig(name=EXPERIMENT_NAME, storage_path=storage_path, storage_filesystem=filesystem,
                                  verbose=0),
    )
    t0 = time.perf_counter()
    grid = tuner.fit()
    seconds = time.perf_counter() - t0
    ok = [r for r in grid if r.error is None and "nll" in (r.metrics or {})]
    if not ok:
        first = next((r.error for r in grid if r.error is not None), "no trial reported a result")
        raise WeightSearchError(f"all {len(grid)} weight-search trials failed; first error: {first}")
    best = min(ok, key=lambda r: r.metrics["nll"])
    w = np.array([best.metrics[f"w{k:02d}"] for k in range(K)], dtype=np.float64)
    search = WeightSearch(
        weights=w / w.sum(), val_nll=float(best.metrics["nll"]), val_acc=float(best.metrics["acc"]),
        trials=len(grid), errored=len(grid) - len(ok), seconds=seconds,
        experiment=storage.url(TUNE_DIR, EXPERIMENT_NAME), trial_nll=[float(r.metrics["nll"]) for r in ok],
    )
    log.info("Tune weight search: %d trials x %d candidates in %.1f s (%.2f trials/s), best val NLL %.5f acc %.4f",
             search.trials, cfg.candidates_per_trial, seconds, search.trials_per_s, search.val_nll, search.val_acc)
    return search


def compare_to_exact(tuned: EnsembleResult, exact: EnsembleResult) -> dict:
    """How far the search landed from the exact fit on validation, and whether within tolerance."""
    nll_pct = 100.0 * (tuned.val["nll"] - exact.val["nll"]) / exact.val["nll"]
    acc_points = 100.0 * (tuned.val["acc"] - exact.val["acc"])
    return {"val_nll_gap_pct": nll_pct, "val_acc_gap_points": acc_points,
            "within_tolerance": bool(nll_pct <= NLL_TOLERANCE_PCT and abs(acc_points) <= ACC_TOLERANCE_POINTS)}


def rule_seeds(storage: RunStorage, K: int, p: float) -> dict[str, np.ndarray]:
    """Uniform weights, and geometric ones when the branches' training losses are on storage."""
    seeds = {"uniform": weight_rule("uniform", np.zeros(K))}
    try:
        seeds["geometric"] = weight_rule("geometric", read_train_losses(storage, K), p)
    except EnsembleInputError as e:
        log.info("no geometric seed for the search: %s", e)
    return seeds


def tune_ensemble_weights(cfg, storage: RunStorage) -> EnsembleResult:
    """Search the weights with Ray Tune, fit the exact reference; write ``ensemble/exact.json``; return "tuned".

    ``cfg`` is the run's ``SpectralConfig`` (``tune``, ``ensemble.p`` and ``ray`` are used). The
    caller writes the returned result (``write_weights``), as ``orchestrator.api.ensemble`` does.
    """
    from orchestrator._ray import init_ray

    K = int(load_manifest(storage)["split"]["K"])
    val, test = load_branch_outputs(storage, K, "val"), load_branch_outputs(storage, K, "test")  # fail before Ray
    if len(val.y) == 0:
        raise EnsembleInputError(f"{storage.url()} has no validation rows to tune the weights on "
                                 "(split.val_fraction is 0?)")
    fit: ExactFit = fit_exact_weights(val.logits, val.y)
    exact = evaluate_weights("exact", fit.weights, val, test, fit.to_extra())
    write_weights(storage, exact, chosen=False)

    init_ray(cfg.ray)
    search = search_weights(val, cfg.tune, storage, seeds=rule_seeds(storage, K, cfg.ensemble.p))
    extra = {
        "search": "ray-tune optuna-tpe (multivariate), simplex u -> -log(1-u) normalised",
        "num_samples": cfg.tune.num_samples, "candidates_per_trial": cfg.tune.candidates_per_trial,
        "trials": search.trials, "errored_trials": search.errored, "tune_seconds": search.seconds,
        "trials_per_s": search.trials_per_s, "experiment": search.experiment,
    }
    tuned = evaluate_weights("tuned", search.weights, val, test, extra)
    closeness = compare_to_exact(tuned, exact)
    tuned.extra.update({"exact_val_nll": exact.val["nll"], "exact_val_acc": exact.val["acc"], **closeness})
    (log.info if closeness["within_tolerance"] else log.warning)(
        "tuned vs exact fit on validation: NLL %+.2f%% (tolerance %.1f%%), accuracy %+.2f points (tolerance %.1f)%s",
        closeness["val_nll_gap_pct"], NLL_TOLERANCE_PCT, closeness["val_acc_gap_points"], ACC_TOLERANCE_POINTS,
        "" if closeness["within_tolerance"] else ": raise tune.num_samples or tune.candidates_per_trial")
    return tuned
