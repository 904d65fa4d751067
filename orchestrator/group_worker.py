"""What every Ray Train worker of one branch's group runs: DDP inside branch ``k`` only.

One loop for both users of DDP (``orchestrator.ddp`` drives it): a branch of ``resources.workers_per_branch``
M > 1 workers, and the DDP baseline, which is branch 0 of the K=1 split. Everything but the parallelism is
the single-process branch's (``branches.train``): the model and its seed (``seed + k``), the optimizer, the
per-epoch schedule, the epochs, and the global batches themselves: epoch ``e``'s shuffled batches of
``train.batch_size`` rows come from branch ``k``'s generator ``(seed, k, e)``, and worker ``r`` of ``M`` takes
rows ``r, r+M, ...`` of each. That is ``DistributedSampler``'s partition (rank ``r`` gets ``perm[r::M]``) cut
into per-worker batches of ``batch_size / M``, so the union of one step's per-worker batches is the
single-process batch: M changes speed, not the math.

Rank 0 writes what a one-process branch writes under ``branches/<k>/`` of the output run (checkpoints in
the same format, ``metrics.jsonl``, logits, rows, ``result.json`` last, ``placement.json``), so the
ensemble, export, predict and serve never ask how a branch was trained. A group (re)starts as a one-process
branch resumes, from the branch's newest checkpoint within ``train.epochs`` (``find_resume_point``): after
a lost worker (Ray Train restarts the group, ``FailureConfig``), after a dead driver, and with more or fewer
epochs. Every epoch rank 0 also reports a Ray Train checkpoint, after the branch's own file: a marker naming
the epoch (``epoch.json``), not a second copy of the state (Ray Train's result is its latest checkpoint's
report, and a test's kill lands after a committed one).

Measured on every worker, by a DDP communication hook (``AllReduceMeter``): the bytes of every gradient
bucket handed to all-reduce, and the wall time from handing a bucket over to its reduced result
(overlapping buckets counted once). Not in the count: DDP's broadcast of BatchNorm buffers from rank 0
at each forward (``broadcast_buffers``, a few KB per step for fc8) and the small per-epoch gather of
these statistics. Every member records its branch, so the group's record proves that no process group
spans two branches.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from branches import _faults
from branches import checkpoint as ckpt_io
from branches.config import ModelConfig, TrainConfig
from branches.data import InMemorySplit, epoch_generator
from branches.finished import check_same_run
from branches.models import build_model
from branches.train import (
    BranchJob,
    _finish,
    loss_and_accuracy,
    lr_factor,
    make_optimizer,
    predict,
    settle_resume,
    train_one_epoch,
)
from data_split import layout
from data_split.layout import load_manifest
from data_split.shutdown import freeze_at_exit
from data_split.storage import RunStorage
from orchestrator._ddp_parts import (
    WORKER_KEYS,
    AllReduceMeter,
    global_batches,
    group_isolation,
    worker_rows,
    worker_totals,
)

if TYPE_CHECKING:
    from orchestrator.branch_task import BoardRef

log = logging.getLogger(__name__)

MARKER_FILE = "epoch.json"  # all a Ray Train checkpoint holds: {"epoch": e}, whose state is checkpoints/epoch=e.pt
METRIC_KEYS = ("epoch", "loss", "val_loss", "val_acc", "images_per_s", "seconds", "lr", "time", "steps")


@dataclass(frozen=True)
class GroupJob:
    """Branch ``k`` of the split at ``data``, trained by one Ray Train group; outputs under ``out`` as branch ``k``."""

    data: RunStorage  # the split whose branch-k shards the workers read (absolute URI)
    k: int
    out: RunStorage  # the run whose branches/<k>/ gets the outputs (the split's run, or the baseline's folder)
    train_root: RunStorage  # the folder of Ray Train's run (its checkpoints); tests' fault requests match it
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    started: float  # unix seconds: when the engine began (result.json's time-to-accuracy clock)
    board: BoardRef | None = None  # the launcher's progress board, or None


# -- one worker -------------------------------------------------------------------------------------------------
def worker_loop(config: dict) -> None:
    """Runs on every worker of the group: train, checkpoint and report per epoch (rank 0), then the outputs."""
    import ray
    import ray.train
    import ray.train.torch
    import torch.distributed as dist
    import torch.nn as nn

    from orchestrator._logging import worker_logging
    from orchestrator.branch_task import RecordingStorage, isolation_record, process_placement

    job: GroupJob = config["job"]
    worker_logging(job.data.credentials)
    freeze_at_exit()
    k, train_cfg = job.k, job.train_cfg
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(train_cfg.threads)
    dev = ray.train.torch.get_device()
    data = RecordingStorage.like(job.data)  # the driver's objects: endpoint, retry budget and credentials
    out = data if job.out == job.data else RecordingStorage.like(job.out)
    manifest = load_manifest(data)
    branch = BranchJob(
        storage=data,
        k=k,
        model_cfg=job.model_cfg,
        train_cfg=train_cfg,
        manifest=manifest,
        device=dev,
        started=job.started,
        out=out,
    )
    amp, configs = branch.amp, branch.configs
    torch.manual_seed(train_cfg.seed + k)  # the one-process branch's initialisation
    model = build_model(job.model_cfg, branch.in_shape, branch.classes).to(dev)
    optimizer = make_optimizer(model, train_cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(train_cfg, e))
    history: list[dict] = []
    found = ckpt_io.find_resume_point(out, k, train_cfg.epochs)  # what a one-process branch resumes from
    if (state := found.checkpoint) is not None:
        check_same_run(out, k, state, configs)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):  # this run's schedule (more epochs)
            group["lr"] = base_lr * lr_factor(train_cfg, scheduler.last_epoch)
        history = list(state["history"])[: state["epoch"]]
    resumed_from = len(history)
    ddp = ray.train.torch.prepare_model(model)  # DistributedDataParallel over this group's process group only
    if rank == 0:  # after prepare_model's broadcast: every worker has loaded its state, so nothing reads these
        settle_resume(out, k, found, [metric_line(h) for h in history])
    meter = AllReduceMeter(world)
    ddp.register_comm_hook(None, meter.hook)

    train = InMemorySplit(data, manifest, "train", k, dev)  # every worker holds branch k's rows; trains its share
    val = InMemorySplit(data, manifest, "val", k, dev) if rank == 0 else None
    loss_fn = nn.CrossEntropyLoss(label_smoothing=train_cfg.label_smoothing)
    board = job.board.reporter() if job.board and rank == 0 else None
    if board is not None:
        board.update(k, {"state": "training", **process_placement()})

    def group_members() -> list[dict]:  # every member's own record: which branch it trains, what it read and wrote
        mine = {**isolation_record(data, k), **_written(isolation_record(out, k))}
        members: list[dict] = [{}] * world
        dist.all_gather_object(members, {**mine, **process_placement(), "rank": rank, "branch": k})
        return members

    def my_batches(batches: list[torch.Tensor]):
        for rows in batches:
            mine = worker_rows(rows, rank, world).to(dev)
            yield train.decode(train.stored[mine]), train.y[mine]

    for epoch in range(resumed_from + 1, train_cfg.epochs + 1):
        batches = global_batches(len(train), train_cfg.batch_size, world, epoch_generator(train_cfg.seed, k, epoch))
        lr = optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        local_loss = train_one_epoch(ddp, optimizer, loss_fn, my_batches(batches), dev, amp=amp)
        rows = sum(len(worker_rows(b, rank, world)) for b in batches)
        stats = {**meter.take(), "train_s": time.perf_counter() - t0, "loss": local_loss, "rows": rows}
        gathered: list[dict] = [{}] * world
        dist.all_gather_object(gathered, stats)  # a few hundred bytes: every worker's numbers to rank 0
        scheduler.step()
        train_s = max(g["train_s"] for g in gathered)
        entry = {
            "epoch": epoch,
            "steps": len(batches),
            "loss": sum(g["loss"] * g["rows"] for g in gathered) / sum(g["rows"] for g in gathered),
            "lr": lr,
            "images_per_s": len(train) / train_s,
            "workers": [{key: g[key] for key in WORKER_KEYS} for g in gathered],
        }
        last = epoch == train_cfg.epochs
        members = group_members() if last else []
        final = None
        if rank == 0:
            val_loss, val_acc = loss_and_accuracy(predict(ddp.module, val.eval_batches(), dev, amp=amp), val.y)
            entry.update(val_loss=val_loss, val_acc=val_acc, seconds=time.perf_counter() - t0, time=time.time())
            history.append(entry)
            state = {
                "epoch": epoch,
                "model": ddp.module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": None,
                "rng": ckpt_io.capture_rng(),
                "history": history,
                "in_shape": list(branch.in_shape),
                "classes": branch.classes,
                **configs,
            }
            ckpt_io.save_checkpoint(out, k, state)  # the one-process branch's file, for export and predict
            out.append_line(layout.metrics(k), json.dumps(metric_line(entry)))
            ckpt_io.prune_checkpoints(out, k, keep=train_cfg.keep_checkpoints)
            log.log(  # a branch's epochs reach the driver through its board: a line only for the baseline's
                logging.INFO if board is None else logging.DEBUG,
                "branch %d epoch %d/%d: loss %.4f val_acc %s",
                k,
                epoch,
                train_cfg.epochs,
                entry["loss"],
                val_acc,
            )
            if board is not None:
                board.update(k, {"state": "training", **metric_line(entry)})
            if last:
                final = _finish_group(branch, ddp, history, val, resumed_from, members, out)
        _report(epoch, rank == 0, final)
        _faults.after_epoch(job.train_root.uri, rank, epoch, before_exit=_committed)  # test-only: no-op otherwise
    if resumed_from >= train_cfg.epochs:  # nothing left to train (a run shortened to an epoch it kept): the outputs,
        members = group_members()  # reported with the state they came from: a later run resumes from this epoch
        final = _finish_group(branch, ddp, history, val, resumed_from, members, out) if rank == 0 else None
        _report(resumed_from, rank == 0, final)


def _report(epoch: int, checkpointed: bool, final: dict | None) -> None:
    """Report epoch ``epoch`` to Ray Train, with a checkpoint naming it if ``checkpointed`` (rank 0, once
    ``checkpoints/epoch=<epoch>.pt`` is written). The driver's result is the latest *checkpoint's* report (Ray
    Train 2.60), so ``final`` always travels with one."""
    import ray.train

    with tempfile.TemporaryDirectory() as d:
        if checkpointed:
            with open(os.path.join(d, MARKER_FILE), "w") as f:
                json.dump({"epoch": epoch}, f)
        checkpoint = ray.train.Checkpoint.from_directory(d) if checkpointed else None
        ray.train.report({"epoch": epoch, "final": final}, checkpoint=checkpoint)


def metric_line(entry: dict) -> dict:
    """An epoch of the history as ``metrics.jsonl`` holds it: a one-process branch's keys plus ``steps``."""
    return {key: entry[key] for key in METRIC_KEYS}


def _written(record: dict) -> dict:
    return {key: record[key] for key in ("files_written_for_other_branches", "bytes_sent_to_other_branches")}


def _committed() -> None:
    """Wait until every checkpoint this worker reported is committed (a test's exit then lands after it)."""
    import ray.train

    ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)


def _finish_group(branch: BranchJob, ddp, history, val, resumed_from, members, out) -> dict:
    """Rank 0, after the last epoch: the branch's outputs (``_finish``), its placement, and the group's totals."""
    import torch.distributed as dist

    per = worker_totals(history)
    by_worker = [p["bytes"] for p in per]
    group = {
        "backend": dist.get_backend(),
        "world_size": len(members),
        "ranks": [m["rank"] for m in members],
        "branch": branch.k,
    }
    extra = {
        "epochs_trained": len(history),
        "workers": len(members),
        "steps": sum(h["steps"] for h in history),
        "allreduce_bytes_per_worker": by_worker[0],
        "allreduce_bytes_by_worker": by_worker,
        "process_group": group,
    }
    result = _finish(branch, ddp.module, history, val, resumed_from, "memory", extra)
    isolation = group_isolation(branch.k, members, by_worker)
    placement = {"workers": [{key: m[key] for key in ("rank", "node_id", "ip", "pid", "gpu_ids")} for m in members]}
    out.write_json(layout.placement(branch.k), {"placement": placement, "isolation": isolation})
    return {
        "result": result,
        "placement": placement,
        "isolation": isolation,
        "ddp": {
            **group,
            "device": str(branch.device),
            "parameters": result["params"],
            "steps": extra["steps"],
            "allreduce_bytes_per_worker": by_worker[0],
            "allreduce_bytes_by_worker": by_worker,
            "allreduce_buckets_by_worker": [p["buckets"] for p in per],
            "allreduce_seconds_by_worker": [p["allreduce_s"] for p in per],
            "train_seconds_by_worker": [p["train_s"] for p in per],
            "allreduce_fraction_by_worker": [p["allreduce_s"] / p["train_s"] if p["train_s"] else None for p in per],
            "resumed_from_epoch": resumed_from,
            "epochs_history": history,
        },
    }
