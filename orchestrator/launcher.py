"""Launching and watching K branch tasks (or K Ray Train groups, ``resources.workers_per_branch`` > 1).

All unfinished branches are launched at once (Ray queues whatever the cluster
cannot hold yet; see ``placement``). The driver polls a progress board for
live status, logs where each branch landed, and collects results. A branch
that fails past its restart limit does not stop the others: when everything
has settled the run fails with ``BranchFailedError`` naming each failed branch
and its last exception, and the finished branches' outputs stay on storage.

With ``resources.workers_per_branch`` M > 1 each branch is a Ray Train group of M DDP workers
(``orchestrator.ddp.fit_group``); ``fit`` blocks, so each group is driven from a thread of its own, as many
at once as the placement plan holds, and the groups' rank 0 workers update the same progress board.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import ray

from branches.config import ModelConfig, TrainConfig
from branches.controls import check_ddp_controls, check_pack_controls
from branches.finished import finished_result
from branches.modes import choose_mode
from data_split import layout
from data_split.errors import ConfigError, SpectralError, user_error
from data_split.layout import load_manifest
from data_split.storage import RunStorage
from orchestrator.branch_task import BoardRef, board_for_this_driver, branch_task
from orchestrator.config import ResourcesConfig
from orchestrator.placement import PlacementPlan, cluster_nodes, pack_size, plan_packs, plan_placement

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.5
# Exceptions worth another try of the whole branch: none. Storage outages are retried with backoff inside
# RunStorage (storage.retry_budget_s), so a StorageError that gets here has spent its budget; anything else
# (a missing shard, bad data, config conflicts, bugs) fails the same way every time. A dead process is always
# restarted (max_restarts), and resumes from its checkpoint.


class BranchFailedError(SpectralError, RuntimeError):
    """One or more branches failed past their restart limit; ``failures`` maps branch -> its last error line."""

    def __init__(self, failures: dict[int, str]) -> None:
        self.failures = dict(failures)
        lines = "; ".join(f"branch {k}: {err}" for k, err in sorted(self.failures.items()))
        super().__init__(f"{len(self.failures)} branch(es) failed: {lines}")

    def __reduce__(self):  # rebuilt from the failures, not the message: it crosses ray:// (tests/test_errors.py)
        return type(self), (self.failures,)


@dataclass
class TrainingOutcome:
    results: dict[int, dict]  # k -> result.json contents (+ placement/isolation for branches run now)
    skipped: list[int] = field(default_factory=list)  # branches already finished before this call
    plan: PlacementPlan | None = None
    diverged: dict[int, dict] = field(default_factory=dict)  # k -> diverged.json (train.on_nonfinite: skip_branch)

    @classmethod
    def settle(cls, settled: dict[int, dict], before: list[int], plan: PlacementPlan | None = None) -> TrainingOutcome:
        """Split what the branches returned into finished results and divergence records."""
        diverged = {k: r for k, r in settled.items() if r.get("diverged")}
        for k, record in sorted(diverged.items()):
            log.warning(
                "branch %d skipped: diverged at epoch %s, step %s (train.on_nonfinite: skip_branch)",
                k,
                record["epoch"],
                record["step"],
            )
        return cls(
            {k: r for k, r in settled.items() if k not in diverged},
            [k for k in before if k not in diverged],
            plan,
            diverged,
        )


def _last_line(error: BaseException) -> str:
    """A branch's error in one line: ours as ``Type: message``, anything else as its traceback's last line."""
    if (err := user_error(error)) is not None:
        return f"{type(err).__name__}: {err}"
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__


def _train_groups(
    storage: RunStorage,
    todo: list[int],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    resources: ResourcesConfig,
    plan: PlacementPlan,
    board,
    board_ref: BoardRef,
    started: float,
    on_progress: Callable[[dict[int, dict]], None] | None,
) -> dict[int, dict]:
    """Branches ``todo`` as Ray Train groups of ``plan.workers`` workers, ``plan.concurrent`` at a time."""
    from orchestrator.ddp import GroupJob, fit_group  # torch: only a driver that trains groups imports it
    from tune.storage import absolute

    check_ddp_controls(train_cfg)  # before any worker starts
    manifest = load_manifest(storage)
    if streamed := [k for k in todo if choose_mode(train_cfg.data, manifest, k, train_cfg.memory_limit_mb) == "stream"]:
        raise ConfigError(
            f"branch(es) {streamed} would stream (train.data: {train_cfg.data}, memory_limit_mb: "
            f"{train_cfg.memory_limit_mb}) but a group of resources.workers_per_branch > 1 workers trains from "
            "memory only (yet): set train.data: memory or resources.workers_per_branch: 1"
        )
    run = absolute(storage)
    results: dict[int, dict] = {}
    failures: dict[int, str] = {}

    def one(k: int) -> dict:
        job = GroupJob(
            data=run,
            k=k,
            out=run,
            train_root=run.child(layout.branch_dir(k)),
            model_cfg=model_cfg,
            train_cfg=train_cfg,
            started=started,
            board=board_ref,
        )
        final = fit_group(
            job,
            workers=plan.workers,
            cpus=plan.cpus_per_branch,
            gpus=plan.gpus_per_branch,
            max_failures=resources.max_restarts,
        )
        return {**final["result"], "placement": final["placement"], "isolation": final["isolation"]}

    with ThreadPoolExecutor(max_workers=plan.concurrent, thread_name_prefix="branch-group") as pool:
        pending: dict[Future, int] = {pool.submit(one, k): k for k in todo}
        while pending:
            done, _ = wait(pending, timeout=POLL_INTERVAL_S, return_when=FIRST_COMPLETED)
            for future in done:
                k = pending.pop(future)
                try:
                    results[k] = future.result()
                except Exception as e:  # DDPFailedError past max_restarts, or ours raised before the group started
                    failures[k] = _last_line(e)
                    log.error("branch %d failed: %s", k, failures[k])
            if on_progress:
                on_progress(ray.get(board.snapshot.remote(board_ref.run)))
    if failures:
        raise BranchFailedError(failures)
    return results


def train_branches(
    storage: RunStorage,
    branches: int,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    resources: ResourcesConfig,
    *,
    on_progress: Callable[[dict[int, dict]], None] | None = None,
) -> TrainingOutcome:
    """Train every unfinished branch as its own Ray task; return when all have settled."""
    started = time.time()  # the engine's start: every branch's time to accuracy counts from here
    results: dict[int, dict] = {}
    for k in range(branches):
        if (done := finished_result(storage, k, model_cfg, train_cfg)) is not None:
            results[k] = done
    skipped = sorted(results)
    if skipped:
        log.info("branches %s already finished: skipping them", skipped)
    todo = [k for k in range(branches) if k not in results]
    if not todo:
        return TrainingOutcome.settle(results, skipped)

    packs, nodes = None, cluster_nodes()
    if (size := pack_size(resources, len(todo), nodes)) > 1 and len(todo) > 1:  # one left (a baseline): no pack
        manifest = load_manifest(storage)
        rows = {k: int(manifest.branches[k].splits["train"].rows) for k in todo}
        packable = {k: choose_mode(train_cfg.data, manifest, k, train_cfg.memory_limit_mb) == "memory" for k in todo}
        packs = plan_packs(todo, size, rows, packable)
        if all(len(pack) == 1 for pack in packs):
            packs = None  # nothing packs (streamed branches, unequal row counts): one plain task per branch
        else:
            check_pack_controls(train_cfg)  # before any branch starts
    plan = plan_placement(len(todo), resources, nodes, packs)
    log.info("placement plan: %s", plan.describe())
    board, board_name = board_for_this_driver()
    board_ref = BoardRef(board_name, uuid.uuid4().hex)  # this training's key on the driver's board
    if plan.workers > 1:
        try:
            results.update(
                _train_groups(
                    storage, todo, model_cfg, train_cfg, resources, plan, board, board_ref, started, on_progress
                )
            )
        finally:
            board.drop.remote(board_ref.run)
        return TrainingOutcome.settle(results, skipped, plan)
    task = ray.remote(
        num_cpus=plan.cpus_per_branch,
        num_gpus=plan.gpus_per_branch,
        # A dead process (a lost node included) is run again, max_restarts times, resuming from its checkpoint;
        # our own exceptions are never retried (retry_exceptions is off by default).
        max_retries=resources.max_restarts,
        # A process that held a GPU trains nothing else (Ray's default for GPU tasks, lost with ray.remote(...)
        # options: CUDA keeps the devices and memory it saw first); CPU processes are reused, torch loaded.
        max_calls=1 if plan.gpus_per_branch else 0,
    )(branch_task)
    # one task per branch, or per pack (keyed by its first branch; it returns k -> result)
    groups = {k: [k] for k in todo} if packs is None else {p[0]: p for p in packs}
    pending = {
        task.remote(storage, k if packs is None else groups[k], model_cfg, train_cfg, board_ref, started): k
        for k in groups
    }
    failures: dict[int, str] = {}
    placed: set[int] = set()
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_INTERVAL_S)
            for ref in ready:
                k = pending.pop(ref)
                try:
                    got = ray.get(ref)
                    results.update({k: got} if packs is None else got)
                except Exception as e:  # WorkerCrashedError, RayTaskError(...): the branch (or pack) is out of retries
                    for b in groups[k]:
                        failures[b] = _last_line(e)
                        log.error("branch %d failed: %s", b, failures[b])
            snapshot = ray.get(board.snapshot.remote(board_ref.run))
            for k, status in sorted(snapshot.items()):
                if k not in placed and "node_id" in status:
                    placed.add(k)
                    gpus = ",".join(status["gpu_ids"]) or "none"
                    log.info(
                        "branch %d on node %s (%s, pid %s), GPU %s",
                        k,
                        status["ip"],
                        status["node_id"][:8],
                        status["pid"],
                        gpus,
                    )
            if on_progress:
                on_progress(snapshot)
    finally:
        for ref in pending:  # the driver stopped early (an interrupt, an error of its own): stop every branch
            ray.cancel(ref, force=True)
        board.drop.remote(board_ref.run)
    if failures:
        raise BranchFailedError(failures)
    return TrainingOutcome.settle(results, skipped, plan)
