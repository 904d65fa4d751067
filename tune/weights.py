"""The Ray Tune search of ensemble weights on the validation logits (``ensemble.weights: tuned``).

A Tuner runs ``tune.num_samples`` trials. Optuna's TPE (through ``OptunaSearch``) proposes
``u`` in the unit cube, mapped onto the simplex (``tune._simplex``), so every proposal is a valid
convex weight vector. A trial spends ``candidates_per_trial`` scored weight vectors on a
derivative-free local search from the proposal (batched Dirichlet rounds, ``tune._simplex``) and
reports the best point: ``nll`` (the metric, minimised) and ``acc``; ``candidates_per_trial: 1``
is plain TPE. The logits reach the trials through Ray's object
store once (``tune.with_parameters``), not through files. The first trials evaluate the uniform
and geometric weights, so the search never ends worse than those rules.

This module takes plain inputs (validation logits and labels, a ``TuneConfig``, the run's
storage); the driver that reads the branches' outputs, fits the exact reference and writes
the records is ``orchestrator.weights``. Tune's own files go to ``<run>/tune/weights/experiment``
(local or s3://); a new search replaces the previous one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from data_split.errors import SpectralError
from data_split.layout import TUNE_WEIGHTS
from data_split.storage import RunStorage
from tune._simplex import local_search, simplex_from_unit, unit_from_simplex
from tune.config import TuneConfig
from tune.storage import EXPERIMENT_NAME, credentials_broker, short_trial_dirname, tune_location

log = logging.getLogger(__name__)

MAX_STARTUP_TRIALS = 10  # TPE's random start-up trials (fewer when num_samples is small)


class WeightSearchError(SpectralError, RuntimeError):
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
    tune.report(
        {"nll": nll, "acc": acc, "proposal_nll": proposal_nll, **{f"w{k:02d}": float(v) for k, v in enumerate(w)}}
    )


def search_weights(
    logits: np.ndarray,
    y: np.ndarray,
    cfg: TuneConfig,
    storage: RunStorage,
    *,
    seeds: dict[str, np.ndarray] | None = None,
) -> WeightSearch:
    """Run the Tuner on validation ``logits`` (K, N, C) and labels ``y`` (N,); ``seeds`` are evaluated first."""
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    K = logits.shape[0]
    names = param_names(K)
    points = [dict(zip(names, unit_from_simplex(w).tolist())) for w in (seeds or {}).values()][: cfg.num_samples]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(
        seed=cfg.seed, multivariate=True, n_startup_trials=min(MAX_STARTUP_TRIALS, max(2, cfg.num_samples // 5))
    )
    storage.remove(TUNE_WEIGHTS)  # a new search replaces the last one (its result lives on in ensemble/*.json)
    storage_path, filesystem = tune_location(storage, TUNE_WEIGHTS)
    trainable = tune.with_parameters(
        _weight_trial, logits=logits, y=y, candidates=cfg.candidates_per_trial, seed=cfg.seed
    )
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={n: tune.uniform(0.0, 1.0) for n in names},
        tune_config=tune.TuneConfig(
            metric="nll",
            mode="min",
            num_samples=cfg.num_samples,
            search_alg=OptunaSearch(sampler=sampler, points_to_evaluate=points or None),
            max_concurrent_trials=cfg.max_concurrent,
            reuse_actors=True,  # trials are ~ms of work: reuse actors
            trial_dirname_creator=short_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT_NAME, storage_path=storage_path, storage_filesystem=filesystem, verbose=0
        ),
    )
    t0 = time.perf_counter()
    with credentials_broker(storage):  # the trials reach the run's store with the config's keys
        grid = tuner.fit()
    seconds = time.perf_counter() - t0
    ok = [r for r in grid if r.error is None and "nll" in (r.metrics or {})]
    if not ok:
        first = next((r.error for r in grid if r.error is not None), "no trial reported a result")
        raise WeightSearchError(f"all {len(grid)} weight-search trials failed; first error: {first}")
    best = min(ok, key=lambda r: r.metrics["nll"])
    w = np.array([best.metrics[f"w{k:02d}"] for k in range(K)], dtype=np.float64)
    search = WeightSearch(
        weights=w / w.sum(),
        val_nll=float(best.metrics["nll"]),
        val_acc=float(best.metrics["acc"]),
        trials=len(grid),
        errored=len(grid) - len(ok),
        seconds=seconds,
        experiment=storage.url(TUNE_WEIGHTS, EXPERIMENT_NAME),
        trial_nll=[float(r.metrics["nll"]) for r in ok],
    )
    log.info(
        "Tune weight search: %d trials x %d candidates in %.1f s (%.2f trials/s), best val NLL %.5f acc %.4f",
        search.trials,
        cfg.candidates_per_trial,
        seconds,
        search.trials_per_s,
        search.val_nll,
        search.val_acc,
    )
    return search
