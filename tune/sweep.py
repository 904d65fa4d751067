"""Hyperparameter sweeps of branch training with Ray Tune (``spectral sweep --config FILE``).

Each trial trains ``sweep.branches`` (default: branch 0) on the run's existing shards with the
trial's overrides of ``train.*`` / ``model.width``, and reports the validation metrics of every
epoch to Tune (``ray.tune.report``, with a small Tune checkpoint). Optuna's TPE proposes the
configurations; ASHA (``sweep.scheduler: asha``) stops the weak ones at its rungs (``time_attr``
= epoch). Layout under the run:

    tune/sweep/spec.json                       what this sweep is (a different one refuses to resume)
    tune/sweep/experiment/                     Tune's experiment (state, searcher, trial results)
    tune/sweep/trials/<trial_id>/branches/<k>/ each trial's training outputs (never <run>/branches/)
    tune/sweep.md, tune/sweep.json             the results table
    tune/best_config.yaml                      the full config with the best trial's overrides

The trial itself is in ``tune._sweep_trial``. Recovery: when the driver dies, running the same
command again finds Tune's experiment state (``Tuner.can_restore``) and resumes it
(``Tuner.restore``): finished trials stay finished, interrupted ones resume from their last epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import time
from dataclasses import dataclass, field
from typing import Any

import yaml

from data_split.shards import load_manifest
from data_split.storage import RunStorage
from orchestrator.config import ConfigError, SpectralConfig, apply_overrides, from_dict
from tune._sweep_trial import _sweep_trial
from tune._storage import EXPERIMENT_NAME, absolute, short_trial_dirname, tune_location
from tune.config import Dimension

log = logging.getLogger(__name__)

SWEEP_DIR = "tune/sweep"
SPEC_FILE = f"{SWEEP_DIR}/spec.json"
TABLE_FILE = "tune/sweep.md"
RESULTS_FILE = "tune/sweep.json"
BEST_CONFIG_FILE = "tune/best_config.yaml"
MAX_TRIAL_FAILURES = 2  # Tune retries a trial whose actor died, from its last checkpoint


class SweepError(ValueError):
    """The sweep cannot run as configured; the message names the key or the file."""


# -- the driver ------------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """What ``spectral sweep`` prints and writes."""

    rows: list[dict]  # one per trial, best first
    best: dict  # the chosen row
    best_config: SpectralConfig
    best_config_path: str  # URL of tune/best_config.yaml
    table_path: str  # URL of tune/sweep.md
    experiment: str  # URL of Tune's experiment folder
    restored: bool  # True when an interrupted sweep was resumed
    metric: str
    mode: str
    keys: list[str] = field(default_factory=list)  # searched config keys, in space order

    @property
    def stopped_early(self) -> int:
        return sum(r["status"] == "stopped early" for r in self.rows)


def check_space_values(cfg: SpectralConfig, dims: list[Dimension]) -> None:
    """Each bound and choice must give a valid config; the error names the key and the value."""
    for dim in dims:
        for value in dim.values_to_check():
            try:
                cfg.replace(**{dim.key: value})
            except ConfigError as e:
                raise SweepError(f"sweep.space.{dim.key}: value {value!r} gives an invalid config: {e}") from None


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


def _current_point(cfg: SpectralConfig, dims: list[Dimension]) -> dict | None:
    """The config's own values as the first trial (a reference row), when they lie in the space."""
    flat = cfg.to_dict()
    point = {}
    for dim in dims:
        section, name = dim.key.split(".", 1)
        v = flat[section][name]
        inside = v in dim.args if dim.kind == "choice" else (v is not None and dim.args[0] <= v <= dim.args[1])
        if not inside:
            return None
        point[dim.key] = v
    return point


def _max_epochs(cfg: SpectralConfig, dims: list[Dimension]) -> int:
    for dim in dims:
        if dim.key == "train.epochs":
            return int(max(dim.args))
    return cfg.train.epochs


def sweep_spec(cfg: SpectralConfig, manifest: dict) -> dict:
    """What identifies a sweep: resuming is only allowed for the very same one."""
    spec = {"sweep": cfg.to_dict()["sweep"], "model": cfg.to_dict()["model"], "train": cfg.to_dict()["train"],
            "split_config_hash": manifest["config_hash"]}
    spec["fingerprint"] = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return spec


def _trial_resources(cfg: SpectralConfig) -> dict[str, float]:
    import ray

    gpus = cfg.resources.gpus_per_branch
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    n = len(cfg.sweep.branches)
    return {"cpu": cfg.resources.cpus_per_branch * n, "gpu": gpus * n}


def run_sweep(cfg: SpectralConfig, *, overwrite: bool = False) -> SweepResult:
    """Run (or resume) the sweep of ``cfg.sweep`` on the run at ``cfg.storage.uri``; write the table and best config."""
    from orchestrator import api

    dims = cfg.sweep.dimensions
    if not dims:
        raise SweepError("sweep.space is empty: nothing to search. Give at least one key, e.g. "
                         "sweep: {space: {train.lr: {loguniform: [1.0e-4, 1.0e-2]}}}")
    check_space_values(cfg, dims)
    api.split(cfg)  # starts Ray; skipped when the shards are up to date
    storage = absolute(api.run_storage(cfg))
    manifest = load_manifest(storage)
    K = int(manifest["split"]["K"])
    if bad := [k for k in cfg.sweep.branches if k >= K]:
        raise SweepError(f"sweep.branches {bad} out of range: the split at {storage.url('data')} has K={K}")
    if empty := [k for k in cfg.sweep.branches if manifest["branches"][k]["splits"]["val"]["rows"] == 0]:
        raise SweepError(f"branches {empty} have no validation rows to score trials on (split.val_fraction is 0?)")

    spec = sweep_spec(cfg, manifest)
    if overwrite:
        storage.remove(SWEEP_DIR)
    if storage.exists(SPEC_FILE) and storage.read_json(SPEC_FILE).get("fingerprint") != spec["fingerprint"]:
        raise SweepError(f"{storage.url(SWEEP_DIR)} holds a different sweep (other space, trials or training "
                         "config); pass --overwrite to replace it, or use another --storage")
    tuner, restored = _make_tuner(cfg, dims, storage, spec)
    t0 = time.perf_counter()
    grid = tuner.fit()
    log.info("sweep: %d trials in %.1f s%s", len(grid), time.perf_counter() - t0, " (resumed)" if restored else "")
    return _summarise(cfg, dims, storage, grid, restored)


def _make_tuner(cfg: SpectralConfig, dims: list[Dimension], storage: RunStorage, spec: dict):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    storage_path, filesystem = tune_location(storage, SWEEP_DIR)
    experiment = posixpath.join(storage_path, EXPERIMENT_NAME)  # no scheme: the filesystem comes with it
    trainable = tune.with_resources(
        tune.with_parameters(_sweep_trial, run=storage,
                             base=cfg.to_dict(), branches=list(cfg.sweep.branches)),
        _trial_resources(cfg),
    )
    if tune.Tuner.can_restore(experiment, storage_filesystem=filesystem):
        log.info("sweep: resuming the interrupted sweep at %s", storage.url(SWEEP_DIR, EXPERIMENT_NAME))
        return tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True,
                                  storage_filesystem=filesystem), True
    storage.remove(SWEEP_DIR)  # no restorable state: leftovers of a sweep killed before Tune saved any
    storage.write_json(SPEC_FILE, spec)

    sc = cfg.sweep
    mode = sc.resolved_mode
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    point = _current_point(cfg, dims)
    searcher = OptunaSearch(
        sampler=optuna.samplers.TPESampler(seed=sc.seed, n_startup_trials=min(10, max(2, sc.num_samples // 3))),
        points_to_evaluate=[point] if point else None,
    )
    if sc.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", max_t=_max_epochs(cfg, dims), grace_period=sc.grace_period,
                                  reduction_factor=sc.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    tuner = tune.Tuner(
        trainable,
        param_space={dim.key: _tune_domain(dim) for dim in dims},
        tune_config=tune.TuneConfig(metric=sc.metric, mode=mode, num_samples=sc.num_samples, search_alg=searcher,
                                    scheduler=scheduler, max_concurrent_trials=sc.max_concurrent,
                                    trial_dirname_creator=short_trial_dirname),
        run_config=tune.RunConfig(
            name=EXPERIMENT_NAME, storage_path=storage_path, storage_filesystem=filesystem, verbose=0,
            failure_config=tune.FailureConfig(max_failures=MAX_TRIAL_FAILURES),
            # Keep every (tiny) Tune checkpoint: num_to_keep would force an experiment snapshot per epoch.
        ),
    )
    return tuner, False


# -- results ---------------------------------------------------------------------------------------------
def _plain(v: Any) -> Any:
    """numpy scalars (from a sampler) as Python values, so that YAML and JSON write them plainly."""
    return v.item() if hasattr(v, "item") else v


def _trial_row(result, cfg: SpectralConfig, dims: list[Dimension]) -> dict:
    m = result.metrics or {}
    overrides = {d.key: _plain(result.config.get(d.key)) for d in dims}
    epochs = int(overrides.get("train.epochs", cfg.train.epochs))
    epochs_run = int(m.get("epoch") or 0)
    if result.error is not None:
        status = "error"
    elif epochs_run >= epochs:
        status = "finished"
    else:
        status = "stopped early" if epochs_run else "no result"
    trial = m.get("trial_id") or posixpath.basename(str(result.path)).removeprefix("trial_")
    return {"trial": trial, "overrides": overrides, "epochs": epochs, "epochs_run": epochs_run,
            "val_acc": m.get("val_acc"), "val_loss": m.get("val_loss"), "loss": m.get("loss"),
            "seconds": m.get("time_total_s"), "status": status,
            **({"error": str(result.error).strip().splitlines()[-1][:300]} if result.error is not None else {})}


def rank_rows(rows: list[dict], metric: str, mode: str) -> tuple[list[dict], dict]:
    """Rows best first (no metric last) and the best row: the best finished trial, else the best of any."""
    sign = -1.0 if mode == "max" else 1.0

    def key(r: dict) -> tuple:
        v = r.get(metric)
        return (v is None, sign * v if v is not None else 0.0)

    ranked = sorted(rows, key=key)
    scored = [r for r in ranked if r.get(metric) is not None]
    if not scored:
        first = next((r["error"] for r in rows if "error" in r), "no trial reported a metric")
        raise SweepError(f"no sweep trial reported {metric}; first error: {first}")
    return ranked, next((r for r in scored if r["status"] == "finished"), scored[0])


def _summarise(cfg: SpectralConfig, dims: list[Dimension], storage: RunStorage, grid, restored: bool) -> SweepResult:
    from tune._sweep_table import render_markdown

    mode = cfg.sweep.resolved_mode
    rows, best = rank_rows([_trial_row(r, cfg, dims) for r in grid], cfg.sweep.metric, mode)
    best_cfg = from_dict(apply_overrides(cfg.to_dict(), best["overrides"]))
    header = (f"# Best configuration of the sweep at {storage.url(SWEEP_DIR)}: trial {best['trial']}, "
              f"{cfg.sweep.metric} {best[cfg.sweep.metric]:.4f} after {best['epochs_run']} epochs.\n"
              f"# Overrides: {json.dumps(best['overrides'])}\n"
              "# storage.uri is the sweep's run (its shards are reused); pass --storage for a fresh run if\n"
              "# branches/ there were trained with another configuration.\n")
    text = header + yaml.safe_dump(best_cfg.public_dict(), sort_keys=False)
    if from_dict(yaml.safe_load(text)) != best_cfg:  # what we write must load back as this very config
        raise SweepError("the best configuration does not round-trip through YAML")
    result = SweepResult(
        rows=rows, best=best, best_config=best_cfg, best_config_path=storage.url(BEST_CONFIG_FILE),
        table_path=storage.url(TABLE_FILE), experiment=storage.url(SWEEP_DIR, EXPERIMENT_NAME), restored=restored,
        metric=cfg.sweep.metric, mode=mode, keys=[d.key for d in dims],
    )
    storage.write_text(BEST_CONFIG_FILE, text)
    storage.write_text(TABLE_FILE, render_markdown(result, cfg))
    storage.write_json(RESULTS_FILE, {"metric": result.metric, "mode": mode, "restored": restored,
                                      "best": best, "trials": rows, "experiment": result.experiment,
                                      "best_config": result.best_config_path})
    log.info("sweep: best trial %s (%s %.4f): %s; %d of %d trials stopped early; best config %s", best["trial"],
             result.metric, best[result.metric], best["overrides"], result.stopped_early, len(rows),
             result.best_config_path)
    return result
