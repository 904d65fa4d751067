"""The DDP engine's pure pieces (no Ray): the batch partition, the per-worker totals, the group's isolation
record, and the communication hook that measures all-reduce bytes (``orchestrator.group_worker`` uses them)."""

from __future__ import annotations

import time

import torch

from branches.data import batch_indices

WORKER_KEYS = ("bytes", "buckets", "allreduce_s", "train_s")  # per worker and epoch, in the history


def global_batches(n: int, batch_size: int, workers: int, generator: torch.Generator) -> list[torch.Tensor]:
    """The single-process batches, with a trailing batch too small to give each worker 2 rows merged.

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


def worker_totals(history: list[dict]) -> list[dict]:
    """Per worker, the sums over the history's epochs of ``WORKER_KEYS``."""
    world = len(history[-1]["workers"])
    return [{key: sum(h["workers"][r][key] for h in history) for key in WORKER_KEYS} for r in range(world)]


def group_isolation(k: int, members: list[dict], allreduce_bytes: list[int]) -> dict:
    """Branch ``k``'s exchange with other branches, from every member's record (rank order) and all-reduce bytes.

    A member is ``{"rank", "branch", "pid", "node_id", "files_read", "files_written_for_other_branches",
    "bytes_sent_to_other_branches"}``. The all-reduce bytes cross to another branch only through a member of
    another branch in the group (none: each records its own branch), files only through writes under another
    branch's folder.
    """
    crossing = sum(b for m, b in zip(members, allreduce_bytes) if m["branch"] != k)
    return {
        "process_group": True,
        "group": {
            "branch": k,
            "world_size": len(members),
            "members": [{key: m[key] for key in ("rank", "branch", "pid", "node_id")} for m in members],
        },
        "files_read": sorted({f for m in members for f in m["files_read"]}),
        "files_written_for_other_branches": sorted({f for m in members for f in m["files_written_for_other_branches"]}),
        "allreduce_bytes_within_branch": sum(allreduce_bytes) - crossing,
        "bytes_sent_to_other_branches": sum(m["bytes_sent_to_other_branches"] for m in members) + crossing,
    }


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
