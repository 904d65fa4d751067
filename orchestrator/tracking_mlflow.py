"""MLflow tracking of a job (``tracking.mlflow_uri``), logged by the driver from the run's records.

    parent run   one per run URI (tag ``spectral.run``): the job's keys of ``PARENT_SECTIONS`` and ``K`` as
                 parameters; after the ensemble, every evaluated weight rule's ``<rule>/val_acc``,
                 ``<rule>/test_acc``, ``<rule>/val_nll``, ``<rule>/test_nll`` (step = ``train.epochs``), the
                 chosen rule's ``val_acc`` and ``test_acc``, and the chosen rule as tag ``spectral.weights``
    child runs   one per branch (tags ``spectral.run`` and ``spectral.branch``), nested under the parent:
                 ``k``, ``K`` and the ``model.*``/``train.*`` keys as parameters; per epoch (step = epoch, at
                 the epoch's wall time) ``loss``, ``val_loss``, ``val_acc``, ``lr``, ``images_per_s`` from
                 its ``metrics.jsonl``

Only the driver talks to MLflow, from storage records, like the TensorBoard files (``orchestrator.tracking``):
the branch actors need no MLflow, and ``mlflow`` is imported only when ``tracking.mlflow_uri`` is set. A
resumed or extended run reopens its runs (found by their tags) and logs only the epochs not logged yet (tag
``spectral.epochs``), so nothing is duplicated; a parameter whose value changed since (``train.epochs`` of an
extended run) keeps its first value, as MLflow requires. Failing to open the experiment is an error before
anything trains; a failed call after that is a warning (tracking never fails a training run; the next epoch
logs what is missing).
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
from collections.abc import Iterable
from typing import Any

from data_split import layout
from data_split.errors import ConfigError
from data_split.storage import RunStorage
from orchestrator.config import SpectralConfig
from orchestrator.tracking import ensemble_scalars, epoch_scalars

log = logging.getLogger(__name__)

RUN_TAG = "spectral.run"  # the run's URI: what finds a job's runs again
BRANCH_TAG = "spectral.branch"  # a child run's branch k
EPOCHS_TAG = "spectral.epochs"  # a child run: the epochs logged so far
WEIGHTS_TAG = "spectral.weights"  # the parent: the chosen weight rule
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: nests a run under another
PARENT_SECTIONS = ("source", "split", "model", "train", "ensemble", "resources")
BRANCH_SECTIONS = ("model", "train")
MAX_PARAMS, MAX_METRICS = 100, 1000  # per log_batch call (MLflow's limits)
INSTALL_HINT = "pip install mlflow-skinny (or the project's `tracking` extra)"


def import_mlflow() -> Any:
    """``mlflow``, imported now; missing, a ``ConfigError`` that says what to install."""
    try:
        import mlflow
        import mlflow.entities
        import mlflow.tracking
    except ImportError as e:
        raise ConfigError(f"tracking.mlflow_uri is set but MLflow cannot be imported ({e}): {INSTALL_HINT}") from e
    return mlflow


def _param(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def flat_params(data: dict, sections: Iterable[str]) -> dict[str, str]:
    """The leaf keys of ``sections`` of a config dict as MLflow parameters: ``{"train.lr": "0.001", ...}``."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}")
        else:
            out[prefix] = _param(node)[:6000]  # MLflow's longest parameter value

    for section in sections:
        walk(data.get(section), section)
    return out


class NoTracking:
    """What ``job`` gives without ``tracking.mlflow_uri``: every call does nothing."""

    def __enter__(self) -> NoTracking:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, snapshot: dict[int, dict]) -> None:
        pass

    def log_branches(self, ks: Iterable[int]) -> None:
        pass

    def log_ensemble(self) -> None:
        pass


def job(cfg: SpectralConfig, storage: RunStorage, K: int) -> MlflowJob | NoTracking:
    """The job's MLflow runs as a context (parent run RUNNING inside; FINISHED, FAILED or KILLED after)."""
    return MlflowJob(cfg, storage, K) if cfg.tracking.mlflow_uri else NoTracking()


def check(cfg: SpectralConfig) -> None:
    """Fail now, before a split, if MLflow is configured but not installed or its store cannot be read."""
    tracking = cfg.tracking
    if tracking.mlflow_uri:
        mlflow = import_mlflow()
        try:
            mlflow.tracking.MlflowClient(tracking_uri=tracking.mlflow_uri).get_experiment_by_name(
                tracking.mlflow_experiment
            )
        except Exception as e:
            raise _unreachable(tracking, e) from e


def _unreachable(tracking: Any, e: Exception) -> ConfigError:
    return ConfigError(
        f"tracking.mlflow_uri {tracking.mlflow_uri}: cannot log to MLflow experiment "
        f"{tracking.mlflow_experiment!r}: {type(e).__name__}: {e}"
    )


class MlflowJob:
    """One run's parent and child runs in the experiment ``tracking.mlflow_experiment`` at ``tracking.mlflow_uri``."""

    def __init__(self, cfg: SpectralConfig, storage: RunStorage, K: int) -> None:
        self.cfg, self.storage, self.K = cfg, storage, K
        self.uri = storage.url()  # absolute: the same run found again from any working directory
        self.mlflow = import_mlflow()
        self.client: Any = None
        self.parent: str | None = None
        self.children: dict[int, str] = {}  # k -> run id
        self.epochs: dict[int, int] = {}  # k -> epochs logged
        self.touched: set[int] = set()  # the branches this job logged (their status is set on exit)

    # -- opening and closing -----------------------------------------------------------------------------
    def __enter__(self) -> MlflowJob:
        tracking = self.cfg.tracking
        try:
            self.client = self.mlflow.tracking.MlflowClient(tracking_uri=tracking.mlflow_uri)
            found = self.client.get_experiment_by_name(tracking.mlflow_experiment)
            self.experiment = (
                found.experiment_id if found is not None else self.client.create_experiment(tracking.mlflow_experiment)
            )
            self._find_runs()
            if self.parent is None:
                name = posixpath.basename(self.uri.rstrip("/")) or self.uri
                run = self.client.create_run(self.experiment, run_name=name, tags={RUN_TAG: self.uri})
                self.parent = run.info.run_id
            else:
                self.client.update_run(self.parent, status="RUNNING")
            params = flat_params(self.cfg.public_dict(), PARENT_SECTIONS)
            changed = self._log_params(self.parent, {"K": str(self.K), **params})
        except Exception as e:
            raise _unreachable(tracking, e) from e
        log.info("MLflow: run %s of experiment %r at %s", self.parent, tracking.mlflow_experiment, tracking.mlflow_uri)
        if changed:
            log.info("MLflow keeps the first value of parameter(s) %s (changed since)", ", ".join(changed))
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        failed = "KILLED" if exc_type is KeyboardInterrupt else "FAILED"
        try:
            self.log_branches(sorted(self.touched))  # what the last epochs wrote
            closing = sorted(self.touched & set(self.children))
            diverged = layout.read_diverged(self.storage, self.K) if closing else {}  # ensemble's job: none
            for k in closing:
                if k in diverged:
                    self.client.set_terminated(self.children[k], status="FAILED")
                elif layout.read_result(self.storage, k) is not None:
                    self.client.set_terminated(self.children[k], status="FINISHED")
                elif exc_type is not None:
                    self.client.set_terminated(self.children[k], status=failed)
            self.client.set_terminated(self.parent, status="FINISHED" if exc_type is None else failed)
        except Exception as e:  # never hides the job's own error, nor fails a finished job
            log.warning("could not close the MLflow runs of %s: %s", self.uri, e)

    def _find_runs(self) -> None:
        runs = self.client.search_runs(
            [self.experiment], filter_string=f"tags.`{RUN_TAG}` = '{self.uri}'", max_results=10000
        )
        for run in sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True):  # the oldest wins
            branch = run.data.tags.get(BRANCH_TAG)
            if branch is None:
                self.parent = run.info.run_id
            else:
                self.children[int(branch)] = run.info.run_id
                self.epochs[int(branch)] = int(run.data.tags.get(EPOCHS_TAG, 0))

    def _log_params(self, run_id: str, params: dict[str, str], *, existing: dict[str, str] | None = None) -> list:
        """Log the parameters ``run_id`` lacks; return the changed ones, which keep their first value (MLflow's
        rule)."""
        if existing is None:
            existing = self.client.get_run(run_id).data.params
        new = [self.mlflow.entities.Param(key, value) for key, value in params.items() if key not in existing]
        for i in range(0, len(new), MAX_PARAMS):
            self.client.log_batch(run_id, params=new[i : i + MAX_PARAMS])
        return sorted(key for key, value in params.items() if key in existing and existing[key] != value)

    # -- branches ------------------------------------------------------------------------------------------
    def _child(self, k: int) -> str:
        if k not in self.children:
            run = self.client.create_run(
                self.experiment,
                run_name=f"branch {k}",
                tags={RUN_TAG: self.uri, BRANCH_TAG: str(k), PARENT_TAG: self.parent, EPOCHS_TAG: "0"},
            )
            self.children[k], self.epochs[k] = run.info.run_id, 0
            existing: dict[str, str] | None = {}
        elif k not in self.touched:
            self.client.update_run(self.children[k], status="RUNNING")
            existing = None
        else:
            return self.children[k]
        self.touched.add(k)
        params = {"k": str(k), "K": str(self.K), **flat_params(self.cfg.public_dict(), BRANCH_SECTIONS)}
        self._log_params(self.children[k], params, existing=existing)
        return self.children[k]

    def log_branch(self, k: int) -> None:
        """Log branch ``k``'s epochs that its child run lacks (from ``metrics.jsonl``)."""
        run_id = self._child(k)
        records = [m for m in layout.read_metrics(self.storage, k) if int(m["epoch"]) > self.epochs.get(k, 0)]
        if not records:
            return
        Metric = self.mlflow.entities.Metric
        metrics = [
            Metric(tag, value, int(float(m.get("time") or time.time()) * 1000), int(m["epoch"]))
            for m in records
            for tag, value in epoch_scalars(m).items()
        ]
        for i in range(0, len(metrics), MAX_METRICS):
            self.client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS])
        self.epochs[k] = max(int(m["epoch"]) for m in records)
        self.client.set_tag(run_id, EPOCHS_TAG, str(self.epochs[k]))

    def log_branches(self, ks: Iterable[int]) -> None:
        for k in ks:
            try:
                self.log_branch(k)
            except Exception as e:  # tracking never fails a training run; the next epoch tries again
                log.warning("could not log branch %d to MLflow: %s", k, e)

    def update(self, snapshot: dict[int, dict]) -> None:
        """The progress board's snapshot (``api.train``): log each branch whose epoch advanced."""
        self.log_branches(k for k, status in sorted(snapshot.items()) if status.get("epoch", 0) > self.epochs.get(k, 0))

    # -- the ensemble ----------------------------------------------------------------------------------------
    def log_ensemble(self) -> None:
        """Every evaluated weight rule's results, and the chosen rule's, on the parent run."""
        try:
            scalars = ensemble_scalars(self.storage)
            tags = []
            if self.storage.exists(layout.WEIGHTS):
                chosen = self.storage.read_json(layout.WEIGHTS)["method"]
                own = {t: scalars.get(f"{chosen}/{t}") for t in ("val_acc", "test_acc")}
                scalars.update({t: v for t, v in own.items() if v is not None})
                tags = [self.mlflow.entities.RunTag(WEIGHTS_TAG, chosen)]
            latest = self.client.get_run(self.parent).data.metrics
            now, step = int(time.time() * 1000), self.cfg.train.epochs
            Metric = self.mlflow.entities.Metric
            metrics = [Metric(t, v, now, step) for t, v in scalars.items() if latest.get(t) != v]  # no repeats
            self.client.log_batch(self.parent, metrics=metrics, tags=tags)
        except Exception as e:
            log.warning("could not log the ensemble of %s to MLflow: %s", self.uri, e)
