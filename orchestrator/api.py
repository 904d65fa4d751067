"""The Python API: the same calls locally and on a cluster (set ``ray.address``).

    from orchestrator import load_config, run
    cfg = load_config("configs/fashion_mnist.yaml", {"train.epochs": 3})
    result = run(cfg)
    print(result.report["ensembles"], result.paths["report_md"])

Each step is idempotent on its run URI: the split is skipped when up to date,
finished branches are skipped, unfinished ones resume from their checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from data_split import RunStorage, SplitResult, layout, load_manifest, split_dataset
from data_split.pipeline import CountFn
from orchestrator import tracking_mlflow
from orchestrator._ray import init_ray
from orchestrator.config import SpectralConfig
from orchestrator.driver import cluster_side
from orchestrator.ensemble import EnsembleResult, evaluate_ensemble, write_weights
from orchestrator.launcher import TrainingOutcome, train_branches
from orchestrator.report import build_report
from orchestrator.run_config import keep_config
from orchestrator.sweep import SweepResult, check_sweep, run_sweep
from orchestrator.tracking import BranchEvents, write_ensemble_events
from orchestrator.weights import tune_ensemble_weights
from tune.scoring import COMPUTED_RULES

log = logging.getLogger(__name__)

ProgressFn = Callable[[dict[int, dict]], None]  # the branches' snapshot (by k), as the driver polls it


@cluster_side
def split(cfg: SpectralConfig, *, overwrite: bool = False, on_progress: CountFn | None = None) -> SplitResult:
    """Write the K spectral sub-datasets (skipped when already up to date); ``on_progress(images written,
    images in all)`` as each task's files are written."""
    init_ray(cfg.ray)
    storage = RunStorage.from_config(cfg.storage)
    result = split_dataset(
        cfg.source, cfg.split, storage, overwrite=overwrite, extra_sources=cfg.extra_sources, on_progress=on_progress
    )
    keep_config(cfg, storage)  # <run>/config.yaml: what `spectral resume` continues with
    return result


def _progress_to(*sinks: ProgressFn | None) -> ProgressFn:
    """One progress callback handing each snapshot of the branches to every sink given (None: none there)."""
    live = [sink for sink in sinks if sink is not None]

    def progress(snapshot: dict[int, dict]) -> None:
        for sink in live:
            sink(snapshot)

    return progress


@cluster_side
def train(cfg: SpectralConfig, *, on_progress: ProgressFn | None = None) -> TrainingOutcome:
    """Train every unfinished branch as an isolated Ray task (the split must exist)."""
    init_ray(cfg.ray)
    storage = RunStorage.from_config(cfg.storage)
    k = load_manifest(storage).K
    keep_config(cfg, storage)  # the training keys this run trains with now (more epochs on a resume)
    events = BranchEvents(storage)  # TensorBoard files, current after every epoch (orchestrator.tracking)
    with tracking_mlflow.job(cfg, storage, k) as mlflow_runs:  # tracking.mlflow_uri set: a child run per branch
        progress = _progress_to(events.update, mlflow_runs.update, on_progress)
        outcome = train_branches(storage, k, cfg.model, cfg.train, cfg.resources, on_progress=progress)
        events.finish(range(k))
        mlflow_runs.log_branches(range(k))
    return outcome


def ensemble(cfg: SpectralConfig) -> EnsembleResult:
    """Weigh the branches' logits by ``ensemble.weights``; write ``ensemble/weights.json``."""
    storage = RunStorage.from_config(cfg.storage)
    k = load_manifest(storage).K
    skip = sorted(layout.read_diverged(storage, k))  # diverged under train.on_nonfinite: skip_branch
    if skip:
        log.warning("ensemble without diverged branch(es) %s", skip)
    chosen = None
    for rule in COMPUTED_RULES:
        res = evaluate_ensemble(
            storage, k, rule, p=cfg.ensemble.p, skip=skip
        )  # weights from the branches' train losses
        write_weights(storage, res, chosen=False)
        if rule == cfg.ensemble.weights:
            chosen = res
    if cfg.ensemble.weights == "tuned":
        chosen = tune_ensemble_weights(cfg, storage, skip)
    write_weights(storage, chosen, chosen=True)
    write_ensemble_events(storage, cfg.train.epochs)
    with tracking_mlflow.job(cfg, storage, k) as mlflow_runs:
        mlflow_runs.log_ensemble()  # on the job's parent run
    return chosen


@cluster_side
def evaluate(cfg: SpectralConfig) -> dict:
    """Ensemble plus report (``report/report.json``, ``report.md``, plots); returns the report.

    Starts Ray only for ``ensemble.weights: tuned`` (its Tune search); the other rules are NumPy.
    """
    ensemble(cfg)
    storage = RunStorage.from_config(cfg.storage)
    keep_config(cfg, storage)
    return build_report(storage)


@cluster_side
def baseline(cfg: SpectralConfig, *, on_progress: ProgressFn | None = None) -> dict:
    """The same network on full-resolution images, same optimizer, schedule and epochs.

    The full-resolution dataset is the K=1 identity split of the same source
    (same validation carve), written under ``<run>/baseline``. With
    ``baseline.engine: single`` it trains there through the very same code
    path as a branch (one process) and returns its ``result.json``; with ``ddp``
    Ray Train DDP trains it on ``baseline.workers`` workers with the same
    global batch (``orchestrator.ddp``) and the result is
    ``<run>/baseline-ddp/result.json``.
    """
    init_ray(cfg.ray)
    run = RunStorage.from_config(cfg.storage)
    storage = run.child(layout.BASELINE)
    full = dataclasses.replace(cfg.split, rows=1, cols=1, transform="identity")
    split_dataset(cfg.source, full, storage)
    if cfg.baseline.engine == "ddp":
        from orchestrator.ddp import train_ddp

        result = train_ddp(cfg, storage, run.child(layout.BASELINE_DDP))
    else:
        train_cfg = dataclasses.replace(cfg.train, on_nonfinite="fail")  # no other branch to go on with
        events = BranchEvents(storage)  # <run>/baseline/branches/0/tensorboard: beside the branches' runs
        progress = _progress_to(events.update, on_progress)
        result = train_branches(storage, 1, cfg.model, train_cfg, cfg.resources, on_progress=progress).results[0]
        events.finish([0])
    if run.exists(layout.WEIGHTS):
        build_report(run)  # put the baseline beside the ensemble
    return result


@cluster_side
def sweep(cfg: SpectralConfig, *, overwrite: bool = False) -> SweepResult:
    """Ray Tune search over branch-training hyperparameters (``sweep.space``) on the run's shards."""
    check_sweep(cfg)  # a bad space fails before anything is split
    split(cfg)  # starts Ray; skipped when the shards are up to date
    return run_sweep(cfg, overwrite=overwrite)


@dataclass
class RunResult:
    uri: str
    split: SplitResult
    training: TrainingOutcome
    report: dict
    paths: dict = field(default_factory=dict)


@cluster_side
def run(
    cfg: SpectralConfig,
    *,
    overwrite: bool = False,
    on_progress: ProgressFn | None = None,
    on_split_progress: CountFn | None = None,
) -> RunResult:
    """The whole job: split if needed, train, ensemble, report."""
    tracking_mlflow.check(cfg)  # tracking.mlflow_uri set without MLflow installed: fail before the split
    split_result = split(cfg, overwrite=overwrite, on_progress=on_split_progress)
    training = train(cfg, on_progress=on_progress)
    report = evaluate(cfg)
    storage = RunStorage.from_config(cfg.storage)
    paths = {
        name: storage.url(layout.report(f)) for name, f in (("report_json", "report.json"), ("report_md", "report.md"))
    }
    return RunResult(uri=cfg.storage.uri, split=split_result, training=training, report=report, paths=paths)
