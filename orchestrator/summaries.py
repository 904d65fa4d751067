"""What the CLI shows of each step's result, as text: the split's bytes, the rows by source, the live
progress of the branches, the training outcome, the baseline, the tuned weights and the config keys.

Tables are ``TextTable``s and lines are strings (rich markup allowed); ``orchestrator.cli`` prints them.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

from data_split.extra_sources import sources_by_branches
from data_split.manifest import Manifest
from orchestrator.config import config_reference
from orchestrator.tables import TextTable, data_bytes

SPLITS = ("train", "val", "test")


def split_table(result) -> TextTable:
    """Rows, bytes and their ratio to raw uint8 per (split, branch), then the whole split."""
    agg: dict[tuple[str, int], dict] = defaultdict(lambda: {"rows": 0, "bytes": 0, "seconds": 0.0})
    for r in result.records:
        a = agg[(r.split, r.branch)]
        a["rows"] += r.rows
        a["bytes"] += r.bytes
        a["seconds"] += r.seconds
    if result.up_to_date:
        for b in result.manifest.branches:
            for s, entry in b.splits.items():
                agg[(s, b.k)] = {"rows": entry.rows, "bytes": entry.bytes or 0, "seconds": 0.0}
    raw = result.manifest.raw_bytes or {}

    def ratio(n: float, d: float) -> str:
        return f"{n / d:.3f}" if d else "-"

    rows = []
    for (s, k), a in sorted(agg.items(), key=lambda kv: (SPLITS.index(kv[0][0]), kv[0][1])):
        secs = a["seconds"]
        rows.append(
            [
                s,
                str(k),
                f"{a['rows']:,}",
                data_bytes(a["bytes"]),
                ratio(a["bytes"], raw.get(s, 0)),
                f"{secs:.2f}" if secs else "-",
                f"{a['rows'] / secs:,.0f}" if secs > 0 else "-",
            ]
        )
    images = sum(result.manifest.counts.values())
    total_bytes = sum(a["bytes"] for a in agg.values())
    rows.append(
        [
            "all",
            f"K={result.manifest.K}",
            f"{images:,} images",
            data_bytes(total_bytes),
            ratio(total_bytes, sum(raw.values())),
            f"{result.seconds:.2f}" if not result.up_to_date else "-",
            f"{images / result.seconds:,.0f}" if not result.up_to_date else "-",
        ]
    )
    return TextTable(
        ["split", "branch", "rows", "bytes", "/ raw", "seconds", "images/s"],
        rows,
        sections=[len(rows) - 1],
        title="spectral split" + (" (up to date: nothing written)" if result.up_to_date else ""),
        caption=(
            f"stored as {result.manifest.split.dtype or 'float32'}; '/ raw': bytes over the same images as raw "
            "uint8 in one zstd Parquet column; per branch: seconds spent serialising and writing its files; "
            "'all': pipeline wall time"
        ),
    )


def sources_table(manifest: Manifest) -> TextTable:
    """Sources by branches: the train rows each source gives each branch ('-': it cannot feed that branch)."""
    rows = [
        [
            str(row["src"]),
            f"{row['name']} {row['resolution'][0]}x{row['resolution'][1]}",
            *(f"{n:,}" if n is not None else "-" for n in row["train_rows"]),
            ", ".join(n[:8] for n in row["nodes"]) or "-",
        ]
        for row in sources_by_branches(manifest)
    ]
    return TextTable(
        ["src", "source", *map(str, range(manifest.K)), "read on"],
        rows,
        "rl" + "r" * manifest.K + "l",
        title="train rows by source and branch",
    )


def progress_table(snapshot: dict[int, dict], epochs: int) -> TextTable:
    """One row per branch while training: state, epoch, loss, validation accuracy, speed, where it runs."""
    rows = [
        [
            str(k),
            s.get("state", "?"),
            f"{s.get('epoch', 0)}/{epochs}",
            f"{s['loss']:.4f}" if "loss" in s else "-",
            f"{s['val_acc']:.4f}" if s.get("val_acc") is not None else "-",
            f"{s['images_per_s']:,.0f}" if "images_per_s" in s else "-",
            s.get("ip", "-"),
            ",".join(s.get("gpu_ids", [])) or "-",
        ]
        for k, s in sorted(snapshot.items())
    ]
    header = ["branch", "state", "epoch", "loss", "val acc", "images/s", "node", "GPU"]
    return TextTable(header, rows, "r" * len(header), title="branches")


HEARTBEAT_S = 30.0  # off a terminal, a line at least this often while nothing else is printed


def branch_line(k: int, s: dict, epochs: int) -> str:
    """One branch's state as a log line: ``branch 0: training, epoch 2/3, loss 0.4123, val acc 0.8123, ...``."""
    parts = [f"branch {k}: {s.get('state', '?')}", f"epoch {s.get('epoch', 0)}/{epochs}"]
    if "loss" in s:
        parts.append(f"loss {s['loss']:.4f}")
    if s.get("val_acc") is not None:
        parts.append(f"val acc {s['val_acc']:.4f}")
    if "images_per_s" in s:
        parts.append(f"{s['images_per_s']:,.0f} images/s")
    return ", ".join(parts) + (f" (node {s['ip']})" if s.get("ip") else "")


class ProgressLines:
    """Progress off a terminal (``ray job logs``, a CI log, ``2> file``): a live table would print only at the
    end, so each branch gets a line when its state or epoch changes, and a heartbeat line comes when nothing
    was printed for ``heartbeat_s``. ``lines(snapshot)`` returns what to print for one poll of the board."""

    def __init__(self, epochs: int, heartbeat_s: float = HEARTBEAT_S, clock: Callable[[], float] = time.monotonic):
        self.epochs, self.heartbeat_s, self.clock = epochs, heartbeat_s, clock
        self.start = self.last = clock()
        self.seen: dict[int, tuple] = {}

    def lines(self, snapshot: dict[int, dict]) -> list[str]:
        out = []
        for k, s in sorted(snapshot.items()):
            key = (s.get("state"), s.get("epoch", 0))
            if self.seen.get(k) != key:
                self.seen[k] = key
                out.append(branch_line(k, s, self.epochs))
        now = self.clock()
        if out:
            self.last = now
        elif now - self.last >= self.heartbeat_s:
            self.last = now
            states = defaultdict(list)
            for k, s in sorted(snapshot.items()):
                states[s.get("state", "?")].append(f"{k}@{s.get('epoch', 0)}/{self.epochs}")
            summary = (
                "; ".join(f"{len(ks)} {state} ({', '.join(ks)})" for state, ks in states.items())
                or "no branch started yet"
            )
            out.append(f"still working after {now - self.start:.0f} s: {summary}")
        return out


def count_line(what: str, done: int, total: int, seconds: float) -> str:
    """``split: 1,200 / 70,000 images (2%), 3,400 images/s``."""
    rate = f", {done / seconds:,.0f} images/s" if seconds > 0 and done else ""
    return f"{what}: {done:,} / {total:,} images ({100 * done / max(total, 1):.0f}%){rate}"


class CountLines:
    """A count's progress off a terminal (split's images written, predict's images classified): the first
    update, then at most one line per ``heartbeat_s``, and the last. ``lines(done, total)``: what to print."""

    def __init__(self, what: str, heartbeat_s: float = HEARTBEAT_S, clock: Callable[[], float] = time.monotonic):
        self.what, self.heartbeat_s, self.clock = what, heartbeat_s, clock
        self.start, self.last = clock(), None

    def lines(self, done: int, total: int) -> list[str]:
        now = self.clock()
        if self.last is not None and done < total and now - self.last < self.heartbeat_s:
            return []
        self.last = now
        return [count_line(self.what, done, total, now - self.start)]


def training_lines(outcome) -> list[str]:
    """How many branches trained now, were already finished, or were skipped as diverged (and where)."""
    line = f"trained {len(outcome.results) - len(outcome.skipped)} branch(es), skipped {len(outcome.skipped)} finished"
    if outcome.diverged:
        line += f", skipped {len(outcome.diverged)} diverged (train.on_nonfinite: skip_branch)"
    if outcome.plan is not None and outcome.plan.packs is not None:  # resources.branches_per_process > 1
        line += f"; {len(outcome.plan.packs)} pack(s), one process each: " + " ".join(
            "[" + ",".join(str(k) for k in pack) + "]" for pack in outcome.plan.packs
        )
    if outcome.plan is not None and outcome.plan.workers > 1:  # resources.workers_per_branch > 1
        line += (
            f"; each a Ray Train group of {outcome.plan.workers} DDP workers, "
            f"{outcome.plan.concurrent} group(s) at once"
        )
    return [line] + [
        f"[yellow]skipped branch {k}[/yellow]: diverged at epoch {record['epoch']}, step "
        f"{record['step'] if record['step'] is not None else '-'}: {record['error']}"
        for k, record in sorted(outcome.diverged.items())
    ]


def baseline_line(result: dict) -> str:
    """The baseline's test accuracy, size and cost; for DDP its all-reduce traffic and time share."""
    if result.get("engine") == "ddp":
        fractions = ", ".join(f"{100 * f:.0f}%" for f in result["allreduce_fraction_by_worker"])
        return (
            f"baseline {result['model']} (Ray Train DDP, {result['workers']} workers, {result['backend']}): test "
            f"accuracy {result['test_acc']:.4f}, {result['parameters']:,} parameters, {result['seconds']:.1f} s, "
            f"{result['steps']} steps, all-reduce {data_bytes(result['allreduce_bytes_per_worker'])} per worker "
            f"(time in all-reduce per worker: {fractions} of training)"
        )
    return (
        f"baseline {result['model']}: test accuracy {result['test_acc']:.4f}, {result['params']:,} parameters, "
        f"{result['train_seconds']:.1f} s, peak memory {data_bytes(result['peak_memory_bytes'])}"
    )


def tune_line(tuned: dict) -> str:
    """The Tune search's cost and how close it came to the exact fit."""
    return (
        f"Tune: {tuned['trials']} trials x {tuned['candidates_per_trial']} candidates, {tuned['trials_per_s']:.2f} "
        f"trials/s; vs the exact fit: val NLL {tuned['val_nll_gap_pct']:+.2f}%, val acc "
        f"{tuned['val_acc_gap_points']:+.2f} points ({'within' if tuned['within_tolerance'] else 'OUTSIDE'} "
        "tolerance)"
    )


def config_table() -> TextTable:
    """Every config key, its default, its allowed values and its meaning (``spectral config --show``)."""
    return TextTable(
        ["key", "default", "allowed", "meaning"],
        [list(row) for row in config_reference()],
        "llll",
        title="configuration (YAML, nested; --set KEY=VALUE overrides a dotted key)",
    )
