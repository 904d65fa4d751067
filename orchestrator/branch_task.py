"""One branch (or one pack of branches) as an isolated Ray task.

The task owns branch ``k``: it reads only branch ``k``'s shards, trains with
plain PyTorch (``branches.train_branch``), checkpoints every epoch, and talks
to nobody but the driver's progress board. No process group, no collective:
zero communication between branches.

A task, not an actor: Ray runs a later branch in a worker process an earlier one
has left idle, with torch already imported (an actor's process exits with it: a
new one cost ~7 CPU s before training, on a 2-core machine where ``import torch``
takes 3.4 s). Nothing of one branch stays in the process for the next:
``train_branch`` seeds torch and sets its thread count itself, and restores the
count. A task that holds a GPU gets a process of its own (``max_calls=1``, as Ray
does for GPU tasks: CUDA keeps the devices it saw first, and the memory).

Recovery: the task is launched with ``max_retries`` (``resources.max_restarts``);
when its process dies, Ray runs it again, which resumes from the newest valid
checkpoint, so at most one epoch is lost. Our own exceptions are never retried.
Running it is idempotent (a finished branch returns its ``result.json``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from branches.config import ModelConfig, TrainConfig
from data_split import layout
from data_split.shutdown import freeze_at_exit
from data_split.storage import RunStorage
from orchestrator._logging import worker_logging

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordingStorage(RunStorage):
    """RunStorage that remembers every file it read and the bytes it wrote where (to prove branch isolation)."""

    reads: list = field(default_factory=list, init=False, repr=False, compare=False)
    writes: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # rel -> bytes written there

    def read_bytes(self, rel: str) -> bytes:
        self.reads.append(rel)
        return super().read_bytes(rel)

    def open_read(self, rel: str):
        self.reads.append(rel)
        return super().open_read(rel)

    def write_bytes(self, rel: str, data: bytes) -> None:
        super().write_bytes(rel, data)
        self.writes[rel] = self.writes.get(rel, 0) + len(data)


def isolation_record(storage: RecordingStorage, k: int) -> dict:
    """What branch ``k`` exchanged with other branches, measured: a process group (none) and bytes sent to them.

    A branch could reach another only through a collective (which needs a process group) or through
    the other's files; so the bytes it sent to other branches are the bytes it wrote outside its own
    ``branches/<k>/`` folder (0 when isolated) plus collective traffic (0 without a process group).
    """
    import torch.distributed as dist

    process_group = dist.is_available() and dist.is_initialized()
    own = f"{layout.branch_dir(k)}/"
    outside = {
        rel: n for rel, n in storage.writes.items() if rel.startswith(f"{layout.BRANCHES}/") and not rel.startswith(own)
    }
    return {
        "process_group": process_group,
        "files_read": sorted(set(storage.reads)),
        "files_written_for_other_branches": sorted(outside),
        "bytes_sent_to_other_branches": sum(outside.values()),
    }


def process_placement() -> dict:
    """Where this Ray worker process runs: node, host, IP, pid and the GPUs Ray gave it."""
    ctx = ray.get_runtime_context()
    return {
        "node_id": ctx.get_node_id(),
        "host": socket.gethostname(),
        "ip": ray.util.get_node_ip_address(),
        "pid": os.getpid(),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
    }


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Latest status per branch of every training under way in one driver, written by its branches, polled by it.

    One per driver process (``board_for_this_driver``), kept for every training it runs (a new actor process per
    training cost ~1 CPU s); each training has a key of its own (``BoardRef.run``) and drops it when done."""

    def __init__(self) -> None:
        self.status: dict[str, dict[int, dict]] = {}

    def update(self, run: str, k: int, status: dict) -> None:
        branches = self.status.setdefault(run, {})
        branches[k] = {**branches.get(k, {}), **status}

    def snapshot(self, run: str) -> dict[int, dict]:
        return self.status.get(run, {})

    def drop(self, run: str) -> None:
        self.status.pop(run, None)


BOARD_PREFIX = "spectral-progress"


@dataclass(frozen=True)
class BoardRef:
    """Where a branch reports: the driver's board, by name (a handle argument lives in the object store, and a
    retry after it is gone would fail: ray-project/ray#53727), and this training's key on it."""

    name: str
    run: str

    def reporter(self) -> BoardReporter:
        return BoardReporter(ray.get_actor(self.name), self.run)


@dataclass(frozen=True)
class BoardReporter:
    actor: Any
    run: str

    def update(self, k: int, status: dict) -> None:
        self.actor.update.remote(self.run, k, status)  # fire and forget: progress, never a branch's result


_BOARDS: dict[str, Any] = {}  # job id -> this driver's board: the handle held here keeps the actor alive


def board_for_this_driver() -> tuple[Any, str]:
    """(the board, its name): this driver's, created on its node the first time (it must outlive the loss of any
    other node: branches restart elsewhere); it lives as long as the driver. Ray ends an actor, named or not, when
    the last handle to it is gone: a board per training whose handle was dropped died under the next one."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ctx = ray.get_runtime_context()
    job = ctx.get_job_id()
    name = f"{BOARD_PREFIX}-{job}"
    if job not in _BOARDS:
        here = NodeAffinitySchedulingStrategy(ctx.get_node_id(), soft=False)
        _BOARDS[job] = ProgressBoard.options(name=name, get_if_exists=True, scheduling_strategy=here).remote()
    return _BOARDS[job], name


def _train_one(
    storage: RecordingStorage,
    k: int,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    board: BoardReporter,
    started: float | None,
) -> dict:
    """Branch ``k`` in this process: its result, with where it ran and what it exchanged (``placement.json``)."""
    from branches import train_branch

    def on_epoch(metrics: dict) -> None:
        board.update(k, {"state": "training", **metrics})

    board.update(k, {"state": "training"})
    started_at = time.time()  # wall clock: comparable across the processes of one machine
    result = train_branch(storage, k, model_cfg, train_cfg, on_epoch=on_epoch, started=started)
    return _finished(storage, k, result, board, started_at)


def _train_pack(
    storages: dict[int, RecordingStorage],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    board: BoardReporter,
    started: float | None,
) -> dict[int, dict]:
    """Branches ``storages`` (``resources.branches_per_process``) as one batched network in this process: k -> result.

    Each branch keeps its own ``RecordingStorage``, so its isolation record counts only its own reads and writes;
    the progress board and ``placement.json`` are per branch too.
    """
    from branches.train_pack import train_pack

    ks = list(storages)

    def on_epoch(metrics: dict) -> None:
        board.update(metrics["k"], {"state": "training", **metrics})

    for k in ks:
        board.update(k, {"state": "training"})
    started_at = time.time()
    results = train_pack(list(storages.values()), ks, model_cfg, train_cfg, on_epoch=on_epoch, started=started)
    return {
        k: result if result.get("diverged") else _finished(storages[k], k, result, board, started_at, packed_with=ks)
        for k, result in results.items()
    }


def _finished(
    storage: RecordingStorage,
    k: int,
    result: dict,
    board: BoardReporter,
    started_at: float,
    packed_with: list[int] | None = None,
) -> dict:
    """Branch ``k``'s result with its placement and isolation records, written beside ``result.json`` for checks
    from outside the job's driver (which alone gets the return value)."""
    isolation = isolation_record(storage, k)
    placement = {**process_placement(), "started_at": started_at, "finished_at": time.time()}
    if packed_with is not None:
        placement["packed_with"] = packed_with
    storage.write_json(layout.placement(k), {"placement": placement, "isolation": isolation})
    board.update(k, {"state": "done", "val_acc": result.get("val_acc")})
    return {**result, "placement": placement, "isolation": isolation}


def branch_task(
    storage: RunStorage,
    branches: int | list[int],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    board: BoardRef,
    started: float | None = None,
) -> dict:
    """Branch ``k`` (an int: its result) or the pack ``ks`` (a list: k -> result); the launcher makes it a Ray task
    with the branch's resources (``ray.remote(...)(branch_task)``). A pack of one (beside bigger ones) trains as a
    plain branch: every control, any data mode."""
    worker_logging(storage.credentials)
    freeze_at_exit()
    ks = [branches] if isinstance(branches, int) else list(branches)
    reporter = board.reporter()
    for k in ks:
        reporter.update(k, {"state": "starting", **process_placement()})
    if len(ks) > 1:
        storages = {k: RecordingStorage.like(storage) for k in ks}
        return _train_pack(storages, model_cfg, train_cfg, reporter, started)
    result = _train_one(RecordingStorage.like(storage), ks[0], model_cfg, train_cfg, reporter, started)
    return result if isinstance(branches, int) else {ks[0]: result}
