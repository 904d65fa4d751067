"""``spectral sweep``: the driver of a hyperparameter sweep (configuration, run, results table, best config).

The search itself (the Tuner, its trials, the rows of its results) is ``tune.sweep``; this module
assembles its plain inputs from the run's ``SpectralConfig``, checks the space, runs it on the
run's existing shards, and writes ``tune/sweep.md``, ``tune/sweep.json`` and
``tune/best_config.yaml`` (docs/storage.md). Trial resources follow the placement plan's
GPU rule (``orchestrator.placement.default_gpus``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field

import yaml

from data_split import layout
from data_split.layout import BEST_CONFIG, SWEEP, SWEEP_RESULTS, SWEEP_SPEC, SWEEP_TABLE, load_manifest
from data_split.manifest import Manifest
from data_split.storage import RunStorage
from orchestrator._ray import init_ray
from orchestrator.config import ConfigError, SpectralConfig, apply_overrides, from_dict
from orchestrator.placement import cluster_nodes, default_gpus
from orchestrator.sweep_text import sweep_markdown
from tune.config import Dimension
from tune.storage import EXPERIMENT_NAME, absolute, credentials_broker
from tune.sweep import SweepError, make_tuner, rank_rows, trial_row

log = logging.getLogger(__name__)


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


def sweep_spec(cfg: SpectralConfig, manifest: Manifest) -> dict:
    """What identifies a sweep: resuming is only allowed for the very same one."""
    spec = {
        "sweep": cfg.to_dict()["sweep"],
        "model": cfg.to_dict()["model"],
        "train": cfg.to_dict()["train"],
        "split_config_hash": manifest.config_hash,
    }
    spec["fingerprint"] = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return spec


def trial_resources(cfg: SpectralConfig) -> dict[str, float]:
    """What one trial asks of Ray: its branches' CPUs and GPUs, by the placement plan's rule."""
    gpus = default_gpus(cfg.resources, cluster_nodes())
    n = len(cfg.sweep.branches)
    return {"cpu": cfg.resources.cpus_per_branch * n, "gpu": gpus * n}


def check_sweep(cfg: SpectralConfig) -> None:
    """The space is not empty and each of its bounds and choices gives a valid config (before any split)."""
    if not cfg.sweep.dimensions:
        raise SweepError(
            "sweep.space is empty: nothing to search. Give at least one key, e.g. "
            "sweep: {space: {train.lr: {loguniform: [1.0e-4, 1.0e-2]}}}"
        )
    check_space_values(cfg, cfg.sweep.dimensions)


def run_sweep(cfg: SpectralConfig, *, overwrite: bool = False) -> SweepResult:
    """Run (or resume) the sweep of ``cfg.sweep`` on the split at ``cfg.storage.uri``; write the table and best config.

    The split must exist: ``orchestrator.api.sweep`` (``spectral sweep``) splits first and holds the run's lease.
    """
    check_sweep(cfg)
    dims = cfg.sweep.dimensions
    init_ray(cfg.ray)
    storage = absolute(RunStorage.from_config(cfg.storage))
    manifest = load_manifest(storage)
    K = manifest.K
    if bad := [k for k in cfg.sweep.branches if k >= K]:
        raise SweepError(f"sweep.branches {bad} out of range: the split at {storage.url(layout.DATA)} has K={K}")
    if empty := [k for k in cfg.sweep.branches if manifest.branches[k].splits["val"].rows == 0]:
        raise SweepError(f"branches {empty} have no validation rows to score trials on (split.val_fraction is 0?)")

    spec = sweep_spec(cfg, manifest)
    if overwrite:
        storage.remove(SWEEP)
    if storage.exists(SWEEP_SPEC) and storage.read_json(SWEEP_SPEC).get("fingerprint") != spec["fingerprint"]:
        raise SweepError(
            f"{storage.url(SWEEP)} holds a different sweep (other space, trials or training "
            "config); pass --overwrite to replace it, or use another --storage"
        )
    base = {"model": cfg.to_dict()["model"], "train": cfg.to_dict()["train"]}
    tuner, restored = make_tuner(
        cfg.sweep,
        dims,
        storage,
        spec,
        base=base,
        resources=trial_resources(cfg),
        max_epochs=_max_epochs(cfg, dims),
        first_point=_current_point(cfg, dims),
    )
    t0 = time.perf_counter()
    with credentials_broker(storage):  # the trials reach the run's store with the config's keys
        grid = tuner.fit()
    log.info("sweep: %d trials in %.1f s%s", len(grid), time.perf_counter() - t0, " (resumed)" if restored else "")
    return _summarise(cfg, dims, storage, grid, restored)


def _summarise(cfg: SpectralConfig, dims: list[Dimension], storage: RunStorage, grid, restored: bool) -> SweepResult:
    mode = cfg.sweep.resolved_mode
    rows, best = rank_rows([trial_row(r, dims, cfg.train.epochs) for r in grid], cfg.sweep.metric, mode)
    best_cfg = from_dict(apply_overrides(cfg.to_dict(), best["overrides"]))
    header = (
        f"# Best configuration of the sweep at {storage.url(SWEEP)}: trial {best['trial']}, "
        f"{cfg.sweep.metric} {best[cfg.sweep.metric]:.4f} after {best['epochs_run']} epochs.\n"
        f"# Overrides: {json.dumps(best['overrides'])}\n"
        "# storage.uri is the sweep's run (its shards are reused); pass --storage for a fresh run if\n"
        "# branches/ there were trained with another configuration.\n"
    )
    public = best_cfg.public_dict()  # no secrets: a run of it takes the keys from its own --set or environment
    text = header + yaml.safe_dump(public, sort_keys=False)
    if from_dict(yaml.safe_load(text)) != from_dict(public):  # what we write must load back as this very config
        raise SweepError("the best configuration does not round-trip through YAML")
    result = SweepResult(
        rows=rows,
        best=best,
        best_config=best_cfg,
        best_config_path=storage.url(BEST_CONFIG),
        table_path=storage.url(SWEEP_TABLE),
        experiment=storage.url(SWEEP, EXPERIMENT_NAME),
        restored=restored,
        metric=cfg.sweep.metric,
        mode=mode,
        keys=[d.key for d in dims],
    )
    storage.write_text(BEST_CONFIG, text)
    storage.write_text(SWEEP_TABLE, sweep_markdown(result, cfg))
    storage.write_json(
        SWEEP_RESULTS,
        {
            "metric": result.metric,
            "mode": mode,
            "restored": restored,
            "best": best,
            "trials": rows,
            "experiment": result.experiment,
            "best_config": result.best_config_path,
        },
    )
    log.info(
        "sweep: best trial %s (%s %.4f): %s; %d of %d trials stopped early; best config %s",
        best["trial"],
        result.metric,
        best[result.metric],
        best["overrides"],
        result.stopped_early,
        len(rows),
        result.best_config_path,
    )
    return result
