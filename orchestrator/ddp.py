"""The full-resolution baseline trained with Ray Train DDP: what a Ray user would pick instead of branches.

``train_ddp(cfg, data, out)`` trains the network of ``model.*`` on the K=1 split at ``data`` (the single
baseline's ``<run>/baseline/``) with Ray Train's ``TorchTrainer`` on ``baseline.workers`` workers (gloo
on CPU, NCCL on GPU) and writes ``<out>/result.json`` (``out`` is ``<run>/baseline-ddp``;
docs/storage.md). Everything but the parallelism is the single baseline's: the model and its seed, the
optimizer (``make_optimizer``), the per-epoch schedule (``lr_factor``), the epochs, and the global
batches themselves: epoch ``e``'s shuffled batches of ``train.batch_size`` rows come from the same
generator as the single baseline's, and worker ``r`` of ``N`` takes rows ``r, r+N, ...`` of each. That
is ``DistributedSampler``'s partition (rank ``r`` gets ``perm[r::N]``) cut into per-worker batches of
``batch_size / N``, so the union of one step's per-worker batches is the single baseline's batch.

Measured on every worker, by a DDP communication hook (``AllReduceMeter``): the bytes of every
gradient bucket handed to all-reduce, and the wall time from handing a bucket over to its reduced
result (overlapping buckets counted once). Not in the count: DDP's broadcast of BatchNorm buffers
from rank 0 at each forward (``broadcast_buffers``, a few KB per step for fc8) and the small
per-epoch gather of these statistics.

Fault tolerance is Ray Train's: rank 0 reports a checkpoint (model, optimizer, schedule, history)
every epoch to Ray Train's storage under ``<out>/ray_train`` (local or ``s3://``); when a worker dies,
``FailureConfig(max_failures=baseline.max_failures)`` restarts the group, which resumes from it.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
import time
from dataclasses import asdict

import torch

from branches import _faults
from branches.config import ModelConfig, TrainConfig
from branches.controls import check_ddp_controls
from branches.data import InMemorySplit, batch_indices, epoch_generator
from branches.models import build_model, count_parameters
from branches.train import loss_and_accuracy, lr_factor, make_optimizer, predict, train_one_epoch
from data_split import layout
from data_split.errors import SpectralError
from data_split.layout import load_manifest
from data_split.manifest import Manifest
from data_split.storage import RunStorage

log = logging.getLogger(__name__)

RESULT_FILE = layout.DDP_RESULT  # in <run>/baseline-ddp/
TRAIN_EXPERIMENT = "ray_train"  # Ray Train's run folder (checkpoints) under <run>/baseline-ddp/


class DDPFailedError(SpectralError, RuntimeError):
    """The DDP baseline failed past baseline.max_failures (or reported no result); the message says why."""


CHECKPOINT_FILE = "state.pt"


# -- pure pieces ---------------------------------------------------------------------------------------------
def global_batches(n: int, batch_size: int, workers: int, generator: torch.Generator) -> list[torch.Tensor]:
    """The single baseline's shuffled batches, with a trailing batch too small to give each worker 2 rows merged.

    (BatchNorm cannot train on one row, and every worker must take part in every step's all-reduce.)
    """
    chunks = batch_indices(n, batch_size, generator)
    if len(chunks) > 1 and len(chunks[-1]) < 2 * workers:
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return chunks


def worker_rows(batch: torch.Tensor, rank: int, workers: int) -> torch.Tensor:
    """Worker ``rank``'s share of one global batch: rows ``rank, rank + workers, ...`` (DistributedSampler's)."""
    return batch[rank::workers]


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of ``(start, end)`` intervals (buckets in flight together count once)."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


class AllReduceMeter:
    """DDP communication hook: all-reduces each gradient bucket (mean) and records its bytes and time.

    ``model.register_comm_hook(None, meter.hook)``; DDP hands the hook each bucket's flat gradient
    buffer, so the bytes counted are exactly what this worker put into all-reduce.
    """

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.bytes = 0
        self.buckets = 0
        self.intervals: list[tuple[float, float]] = []  # perf_counter (start, end) of each bucket's all-reduce

    def hook(self, _state, bucket):  # no annotations: DDP rejects any but the real GradBucket/Future classes
        import torch.distributed as dist

        buf = bucket.buffer()
        self.bytes += buf.numel() * buf.element_size()
        self.buckets += 1
        start = time.perf_counter()
        fut = dist.all_reduce(buf.div_(self.world_size), async_op=True).get_future()

        def done(f: torch.futures.Future) -> torch.Tensor:
            self.intervals.append((start, time.perf_counter()))
            return f.value()[0]

        return fut.then(done)

    def take(self) -> dict:
        """Bytes, buckets and all-reduce seconds since the last call; resets the counters."""
        out = {"bytes": self.bytes, "buckets": self.buckets, "allreduce_s": union_seconds(self.intervals)}
        self.bytes, self.buckets, self.intervals = 0, 0, []
        return out


# -- one worker -------------------------------------------------------------------------------------------------
def _worker_loop(config: dict) -> None:
    """Runs on every Ray Train worker: train, report a checkpoint per epoch (rank 0), and finally the result."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist
    import torch.nn as nn

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    model_cfg, train_cfg = ModelConfig(**config["model"]), TrainConfig(**config["train"])
    torch.set_num_threads(train_cfg.threads)
    dev = ray.train.torch.get_device()
    amp = train_cfg.amp and dev.type == "cuda"
    storage: RunStorage = config["data"]  # the driver's object: endpoint, retry budget and credentials (pickled)
    manifest = load_manifest(storage)
    in_shape, classes = manifest.split.shape, int(manifest.source.classes)

    torch.manual_seed(train_cfg.seed)  # the single baseline's initialisation (branch k = 0: seed + 0)
    model = build_model(model_cfg, in_shape, classes).to(dev)
    optimizer = make_optimizer(model, train_cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(train_cfg, e))
    history: list[dict] = []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = list(state["history"])
    resumed_from = len(history)
    ddp = ray.train.torch.prepare_model(model)  # DistributedDataParallel over the process group Ray Train set up
    meter = AllReduceMeter(world)
    ddp.register_comm_hook(None, meter.hook)

    train = InMemorySplit(storage, manifest, "train", 0, dev)  # every worker holds the rows; it trains on its share
    val = InMemorySplit(storage, manifest, "val", 0, dev) if rank == 0 else None
    loss_fn = nn.CrossEntropyLoss(label_smoothing=train_cfg.label_smoothing)

    def my_batches(batches: list[torch.Tensor]):
        for rows in batches:
            mine = worker_rows(rows, rank, world).to(dev)
            yield train.decode(train.stored[mine]), train.y[mine]

    for epoch in range(resumed_from + 1, train_cfg.epochs + 1):
        batches = global_batches(len(train), train_cfg.batch_size, world, epoch_generator(train_cfg.seed, 0, epoch))
        t0 = time.perf_counter()
        local_loss = train_one_epoch(ddp, optimizer, loss_fn, my_batches(batches), dev, amp=amp)
        rows = sum(len(worker_rows(b, rank, world)) for b in batches)
        stats = {**meter.take(), "train_s": time.perf_counter() - t0, "loss": local_loss, "rows": rows}
        gathered: list[dict] = [{}] * world
        dist.all_gather_object(gathered, stats)  # a few hundred bytes: every worker's numbers to rank 0
        scheduler.step()
        mean_loss = sum(g["loss"] * g["rows"] for g in gathered) / sum(g["rows"] for g in gathered)
        entry = {
            "epoch": epoch,
            "steps": len(batches),
            "loss": mean_loss,
            "workers": [{k: g[k] for k in ("bytes", "buckets", "allreduce_s", "train_s")} for g in gathered],
        }
        with tempfile.TemporaryDirectory() as d:
            if rank == 0:
                val_loss, val_acc = loss_and_accuracy(predict(ddp.module, val.eval_batches(), dev, amp=amp), val.y)
                entry.update(val_loss=val_loss, val_acc=val_acc, time=time.time())
                history.append(entry)
                torch.save(
                    {
                        "model": ddp.module.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "history": history,
                    },
                    os.path.join(d, CHECKPOINT_FILE),
                )
                log.info("ddp epoch %d/%d: loss %.4f val_acc %s", epoch, train_cfg.epochs, entry["loss"], val_acc)
            final = (
                _final(storage, manifest, ddp, dev, amp, history, resumed_from)
                if rank == 0 and epoch == train_cfg.epochs
                else None
            )
            ray.train.report(
                {"epoch": epoch, "final": final},
                checkpoint=ray.train.Checkpoint.from_directory(d) if rank == 0 else None,
            )
        _faults.after_epoch(storage.uri, rank, epoch, before_exit=_committed)  # test-only: a no-op outside the tests


def _committed() -> None:
    """Wait until every checkpoint this worker reported is committed (a test's exit then lands after it)."""
    import ray.train

    ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)


def _final(storage, manifest, ddp, dev, amp, history, resumed_from) -> dict:
    """Rank 0, after the last epoch: test accuracy and the per-worker totals of the whole history."""
    test = InMemorySplit(storage, manifest, "test", 0, dev)
    test_loss, test_acc = loss_and_accuracy(predict(ddp.module, test.eval_batches(), dev, amp=amp), test.y)
    world = len(history[-1]["workers"])
    per = [
        {key: sum(h["workers"][r][key] for h in history) for key in ("bytes", "buckets", "allreduce_s", "train_s")}
        for r in range(world)
    ]
    import torch.distributed as dist

    return {
        "backend": dist.get_backend(),
        "device": str(dev),
        "steps": sum(h["steps"] for h in history),
        "parameters": count_parameters(ddp.module),
        "test_acc": test_acc,
        "test_nll": test_loss,
        "val_acc": history[-1]["val_acc"],
        "val_nll": history[-1]["val_loss"],
        "train_loss": history[-1]["loss"],
        "allreduce_bytes_per_worker": per[0]["bytes"],
        "allreduce_bytes_by_worker": [p["bytes"] for p in per],
        "allreduce_buckets_by_worker": [p["buckets"] for p in per],
        "allreduce_seconds_by_worker": [p["allreduce_s"] for p in per],
        "train_seconds_by_worker": [p["train_s"] for p in per],
        "allreduce_fraction_by_worker": [p["allreduce_s"] / p["train_s"] if p["train_s"] else None for p in per],
        "resumed_from_epoch": resumed_from,
        "epochs_history": history,
    }


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


def train_ddp(cfg, data: RunStorage, out: RunStorage) -> dict:
    """Train the baseline with Ray Train DDP on ``cfg.baseline.workers`` workers; write and return result.json.

    ``data``: the K=1 split (``<run>/baseline``); ``out``: ``<run>/baseline-ddp``. A finished result of the
    same configuration is returned without training again.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from tune.storage import absolute, credentials_broker, tune_location

    check_ddp_controls(cfg.train)  # before any worker starts
    manifest = load_manifest(data)
    stored = _stored_config(cfg, manifest)
    if out.exists(RESULT_FILE) and (done := out.read_json(RESULT_FILE)).get("config") == stored:
        log.info("ddp baseline at %s already finished: not training again", out.url())
        return done
    workers = cfg.baseline.workers
    use_gpu = ray.cluster_resources().get("GPU", 0) >= workers
    out = absolute(out)
    storage_path, filesystem = tune_location(out, "")
    started = time.time()
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"model": asdict(cfg.model), "train": asdict(cfg.train), "data": absolute(data)},
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.baseline.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=RunConfig(
            name=TRAIN_EXPERIMENT,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=cfg.baseline.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints or None),
        ),
    )
    log.info(
        "ddp baseline: %d worker(s) (%s), global batch %d (%g per worker), checkpoints under %s",
        workers,
        "GPU, nccl" if use_gpu else "CPU, gloo",
        cfg.train.batch_size,
        cfg.train.batch_size / workers,
        out.url(TRAIN_EXPERIMENT),
    )
    with credentials_broker(out):  # Ray Train's controller and workers reach the store with the config's keys
        result = fit(trainer)
    seconds = time.time() - started
    final = (result.metrics or {}).get("final")
    if result.error is not None or not final:
        raise DDPFailedError(f"ddp baseline failed: {result.error or 'no final result reported'}")
    history = final.pop("epochs_history")
    record = {
        "engine": "ddp",
        "workers": workers,
        **final,
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
    log.info(
        "ddp baseline: test acc %.4f, %d steps, %.1f MB all-reduced per worker, %.1f s",
        record["test_acc"],
        record["steps"],
        record["allreduce_bytes_per_worker"] / 1e6,
        seconds,
    )
    return record
