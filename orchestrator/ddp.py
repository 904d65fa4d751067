"""Ray Train DDP: one branch as a group of workers, and the full-resolution baseline as the same engine.

``fit_group(job, ...)`` trains branch ``job.k`` of a split with Ray Train's ``TorchTrainer`` on M workers
(gloo on CPU, NCCL on GPU; the loop is ``orchestrator.group_worker``'s) and returns rank 0's final report;
the launcher runs one per branch (``resources.workers_per_branch`` > 1), each from its own thread, since
``fit`` blocks. ``train_ddp(cfg, data, out)`` is that engine on branch 0 of the K=1 split at ``data``
(``<run>/baseline/``) with ``baseline.workers`` workers: the branch's outputs go under
``<out>/branches/0/`` and the DDP record to ``<out>/result.json`` (``out`` is ``<run>/baseline-ddp``;
docs/storage.md).

Fault tolerance is Ray Train's: rank 0 reports a checkpoint every epoch to Ray Train's run folder
(``ray_train`` under the group's folder: ``<run>/branches/<k>/`` or ``<run>/baseline-ddp/``; local or
``s3://``); when a worker dies, ``FailureConfig(max_failures)`` restarts the group, which resumes from it,
and a re-run after a dead driver resumes from the same folder.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import asdict

from branches.controls import check_ddp_controls
from data_split import layout
from data_split.errors import SpectralError
from data_split.layout import load_manifest
from data_split.manifest import Manifest
from data_split.storage import RunStorage
from orchestrator._ddp_parts import (  # noqa: F401  (the engine's pure pieces, importable from here)
    AllReduceMeter,
    global_batches,
    group_isolation,
    union_seconds,
    worker_rows,
)
from orchestrator.group_worker import GroupJob, worker_loop
from orchestrator.tracking import BranchEvents

log = logging.getLogger(__name__)

RESULT_FILE = layout.DDP_RESULT  # in <run>/baseline-ddp/
TRAIN_EXPERIMENT = "ray_train"  # Ray Train's run folder (checkpoints) under the group's folder


class DDPFailedError(SpectralError, RuntimeError):
    """A DDP group failed past its max_failures (or reported no result); the message says which and why."""


# -- the driver -------------------------------------------------------------------------------------------------
def _stored_config(cfg, manifest: Manifest) -> dict:
    return {
        "model_config": asdict(cfg.model),
        "train_config": asdict(cfg.train),
        "workers": cfg.baseline.workers,
        "split_config_hash": manifest.config_hash,
    }


def fit(trainer):
    """``trainer.fit()``, after which its controller actor goes away.

    Ray 2.60's ``fit`` registers a SIGINT handler (in the main thread) that closes over the controller's
    handle and is never removed, so the controller actor, its dataset manager and their polling outlive
    the call for as long as the driver process lives. Restoring the previous handler drops that last
    reference.
    """
    before = signal.getsignal(signal.SIGINT)
    try:
        return trainer.fit()
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, before)


def fit_group(job: GroupJob, *, workers: int, cpus: float, gpus: float, max_failures: int) -> dict:
    """Train ``job``'s branch with a Ray Train group of ``workers`` workers (``cpus``, ``gpus`` each); return rank
    0's final report (``result``: its result.json, ``placement``, ``isolation``, ``ddp``: the group's totals).

    Raises ``DDPFailedError`` when the group failed past ``max_failures`` restarts.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from tune.storage import credentials_broker, tune_location

    storage_path, filesystem = tune_location(job.train_root, "")
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"job": job},
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=gpus > 0,
            resources_per_worker={"CPU": cpus, **({"GPU": gpus} if gpus else {})},
        ),
        run_config=RunConfig(
            name=TRAIN_EXPERIMENT,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=job.train_cfg.keep_checkpoints or None),
        ),
    )
    log.info(
        "branch %d: %d DDP worker(s) (%s), global batch %d (%g per worker), Ray Train checkpoints under %s",
        job.k,
        workers,
        "GPU, nccl" if gpus else "CPU, gloo",
        job.train_cfg.batch_size,
        job.train_cfg.batch_size / workers,
        job.train_root.url(TRAIN_EXPERIMENT),
    )
    with credentials_broker(job.train_root):  # Ray Train's controller and workers reach the store with its keys
        result = fit(trainer)
    final = (result.metrics or {}).get("final")
    if result.error is not None or not final:
        raise DDPFailedError(
            f"the DDP group of branch {job.k} under {job.train_root.url()} failed: "
            f"{result.error or 'no final result reported'}"
        )
    return final


def train_ddp(cfg, data: RunStorage, out: RunStorage) -> dict:
    """Train the baseline with Ray Train DDP on ``cfg.baseline.workers`` workers; write and return result.json.

    ``data``: the K=1 split (``<run>/baseline``); ``out``: ``<run>/baseline-ddp``. A finished result of the
    same configuration is returned without training again.
    """
    import ray

    from tune.storage import absolute

    check_ddp_controls(cfg.train)  # before any worker starts
    manifest = load_manifest(data)
    stored = _stored_config(cfg, manifest)
    if out.exists(RESULT_FILE) and (done := out.read_json(RESULT_FILE)).get("config") == stored:
        log.info("ddp baseline at %s already finished: not training again", out.url())
        return done
    workers = cfg.baseline.workers
    use_gpu = ray.cluster_resources().get("GPU", 0) >= workers
    out = absolute(out)
    started = time.time()
    job = GroupJob(
        data=absolute(data),
        k=0,
        out=out,
        train_root=out,
        model_cfg=cfg.model,
        train_cfg=cfg.train,
        started=started,
    )
    final = fit_group(
        job,
        workers=workers,
        cpus=cfg.baseline.cpus_per_worker,
        gpus=1 if use_gpu else 0,
        max_failures=cfg.baseline.max_failures,
    )
    seconds = time.time() - started
    ddp, branch = final["ddp"], final["result"]
    history = ddp.pop("epochs_history")
    record = {
        "engine": "ddp",
        "workers": workers,
        **{key: v for key, v in ddp.items() if key not in ("world_size", "ranks", "branch")},
        **{key: branch[key] for key in ("test_acc", "test_nll", "val_acc", "val_nll", "train_loss")},
        "seconds": seconds,
        "started": started,
        "global_batch_size": cfg.train.batch_size,
        "epochs": cfg.train.epochs,
        "model": cfg.model.name,
        "val_curve": [
            {"epoch": h["epoch"], "val_acc": h["val_acc"], "elapsed_s": h["time"] - started} for h in history
        ],
        "epochs_history": history,
        "config": stored,
    }
    out.write_json(RESULT_FILE, record)
    BranchEvents(out).finish([0])  # <run>/baseline-ddp/branches/0/tensorboard, from rank 0's metrics.jsonl
    log.info(
        "ddp baseline: test acc %.4f, %d steps, %.1f MB all-reduced per worker, %.1f s",
        record["test_acc"],
        record["steps"],
        record["allreduce_bytes_per_worker"] / 1e6,
        seconds,
    )
    return record
