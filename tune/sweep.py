"""Hyperparameter sweeps of branch training with Ray Tune: the Tuner and the rows of its results.

Plain inputs only (a ``SweepConfig``, its dimensions, the base ``model``/``train`` dicts, the
trial's resources, the run's storage); the driver that assembles the configuration, checks the
space, writes the table and the best config is ``orchestrator.sweep`` (``spectral sweep``).

Each trial (``tune._sweep_trial``) trains ``sweep.branches`` on the run's existing shards with the
trial's overrides of ``train.*`` / ``model.width`` and reports the validation metrics of every
epoch. Optuna's TPE proposes the configurations; ASHA (``sweep.scheduler: asha``) stops the weak
ones at its rungs (``time_attr`` = epoch). Layout under the run (``data_split.layout``):

    tune/sweep/spec.json                       what this sweep is (a different one refuses to resume)
    tune/sweep/experiment/                     Tune's experiment (state, searcher, trial results)
    tune/sweep/trials/<trial_id>/branches/<k>/ each trial's training outputs (never <run>/branches/)
    tune/sweep.md, tune/sweep.json             the results table
    tune/best_config.yaml                      the full config with the best trial's overrides

Recovery: when the driver dies, running the same command again finds Tune's experiment state
(``Tuner.can_restore``) and resumes it (``Tuner.restore``): finished trials stay finished,
interrupted ones resume from their last epoch.
"""

from __future__ import annotations

import logging
import posixpath
from typing import Any

from data_split.errors import SpectralError
from data_split.layout import SWEEP, SWEEP_SPEC
from data_split.storage import RunStorage
from tune._sweep_trial import _sweep_trial
from tune.config import Dimension, SweepConfig
from tune.storage import EXPERIMENT_NAME, short_trial_dirname, tune_location

log = logging.getLogger(__name__)

MAX_TRIAL_FAILURES = 2  # Tune retries a trial whose actor died, from its last checkpoint


class SweepError(SpectralError, ValueError):
    """The sweep cannot run as configured; the message names the key or the file."""


def _tune_domain(dim: Dimension):
    from ray import tune

    low_high = dim.args
    if dim.kind == "loguniform":
        return tune.loguniform(*low_high)
    if dim.kind == "uniform":
        return tune.uniform(*low_high)
    if dim.kind == "randint":
        return tune.randint(low_high[0], low_high[1] + 1)  # inclusive in YAML, exclusive in Tune
    return tune.choice(list(dim.args))


def make_tuner(
    sc: SweepConfig,
    dims: list[Dimension],
    storage: RunStorage,
    spec: dict,
    *,
    base: dict,
    resources: dict[str, float],
    max_epochs: int,
    first_point: dict | None,
):
    """(Tuner, restored): Tune's restored experiment when one is there, else a new one (``spec`` written first).

    ``base`` holds the ``model`` and ``train`` dicts the trials override; ``first_point`` (the
    config's own values, when inside the space) is evaluated first as a reference row.
    """
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    storage_path, filesystem = tune_location(storage, SWEEP)
    experiment = posixpath.join(storage_path, EXPERIMENT_NAME)  # no scheme: the filesystem comes with it
    trainable = tune.with_resources(
        tune.with_parameters(_sweep_trial, run=storage, base=base, branches=list(sc.branches)),
        resources,
    )
    if tune.Tuner.can_restore(experiment, storage_filesystem=filesystem):
        log.info("sweep: resuming the interrupted sweep at %s", storage.url(SWEEP, EXPERIMENT_NAME))
        return tune.Tuner.restore(
            experiment, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=filesystem
        ), True
    storage.remove(SWEEP)  # no restorable state: leftovers of a sweep killed before Tune saved any
    storage.write_json(SWEEP_SPEC, spec)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = OptunaSearch(
        sampler=optuna.samplers.TPESampler(seed=sc.seed, n_startup_trials=min(10, max(2, sc.num_samples // 3))),
        points_to_evaluate=[first_point] if first_point else None,
    )
    if sc.scheduler == "asha":
        scheduler = ASHAScheduler(
            time_attr="epoch", max_t=max_epochs, grace_period=sc.grace_period, reduction_factor=sc.reduction_factor
        )
    else:
        scheduler = FIFOScheduler()
    tuner = tune.Tuner(
        trainable,
        param_space={dim.key: _tune_domain(dim) for dim in dims},
        tune_config=tune.TuneConfig(
            metric=sc.metric,
            mode=sc.resolved_mode,
            num_samples=sc.num_samples,
            search_alg=searcher,
            scheduler=scheduler,
            max_concurrent_trials=sc.max_concurrent,
            # A trial starts in the process a finished (or stopped) one left, torch loaded: each new process
            # cost ~7 CPU s before training on 2 cores. Nothing of a trial stays in it (tune._sweep_trial).
            reuse_actors=True,
            trial_dirname_creator=short_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT_NAME,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=MAX_TRIAL_FAILURES),
            # Keep every (tiny) Tune checkpoint: num_to_keep would force an experiment snapshot per epoch.
        ),
    )
    return tuner, False


# -- results ---------------------------------------------------------------------------------------------
def _plain(v: Any) -> Any:
    """numpy scalars (from a sampler) as Python values, so that YAML and JSON write them plainly."""
    return v.item() if hasattr(v, "item") else v


def trial_row(result, dims: list[Dimension], default_epochs: int) -> dict:
    """One Tune result as a table row: overrides, epochs run, metrics, status."""
    m = result.metrics or {}
    overrides = {d.key: _plain(result.config.get(d.key)) for d in dims}
    epochs = int(overrides.get("train.epochs", default_epochs))
    epochs_run = int(m.get("epoch") or 0)
    if result.error is not None:
        status = "error"
    elif epochs_run >= epochs:
        status = "finished"
    else:
        status = "stopped early" if epochs_run else "no result"
    trial = m.get("trial_id") or posixpath.basename(str(result.path)).removeprefix("trial_")
    return {
        "trial": trial,
        "overrides": overrides,
        "epochs": epochs,
        "epochs_run": epochs_run,
        "val_acc": m.get("val_acc"),
        "val_loss": m.get("val_loss"),
        "loss": m.get("loss"),
        "seconds": m.get("time_total_s"),
        "status": status,
        **({"error": str(result.error).strip().splitlines()[-1][:300]} if result.error is not None else {}),
    }


def rank_rows(rows: list[dict], metric: str, mode: str) -> tuple[list[dict], dict]:
    """Rows best first (no metric last) and the best row: the best finished trial, else the best of any.

    Ties go to the smaller trial id: Tune's row order differs between a sweep and its restore.
    """
    sign = -1.0 if mode == "max" else 1.0

    def key(r: dict) -> tuple:
        v = r.get(metric)
        return (v is None, sign * v if v is not None else 0.0, r["trial"])

    ranked = sorted(rows, key=key)
    scored = [r for r in ranked if r.get(metric) is not None]
    if not scored:
        first = next((r["error"] for r in rows if "error" in r), "no trial reported a metric")
        raise SweepError(f"no sweep trial reported {metric}; first error: {first}")
    return ranked, next((r for r in scored if r["status"] == "finished"), scored[0])
